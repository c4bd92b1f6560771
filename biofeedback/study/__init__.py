"""Across sessions and participants: pre/post statistics, the long table, answer entry, simulated studies."""
