"""Floor 3: live session wiring, beat timeline, HRV analysis, live metrics, reports and displays."""
