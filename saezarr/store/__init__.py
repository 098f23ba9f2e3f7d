"""The Zarr store: its format, whole-shard encoding, growing it, and reading it back."""
