"""The Zarr store: its layout, whole-shard encoding, the writer lock, and reading it back."""
