"""The export commands: legacy `.npz` files per configuration and per sentence."""
