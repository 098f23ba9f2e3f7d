"""The Zarr store: its format, whole-shard encoding, growing it, and reading it back."""

DEFAULT_CHUNK_FRAGMENTS = 512  # fragments per unit of a store by default (here, not in format: the CLI's help reads it)
