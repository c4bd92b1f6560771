"""Floor 1: Bluetooth heart-rate straps, Polar PMD, the simulated strap and replay. Imports nothing else of ours."""
