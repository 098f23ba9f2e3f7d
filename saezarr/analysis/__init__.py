"""Analysing a store: which SAE features track the concept labels."""
