"""One recorded session to publishable numbers: artifact correction, HRV per phase, resonance, reports."""
