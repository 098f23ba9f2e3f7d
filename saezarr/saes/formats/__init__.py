"""The SAE formats saezarr reads, one module each."""
