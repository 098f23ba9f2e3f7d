"""Generated stand-ins for models and SAEs (tests, the demo and benchmarks)."""
