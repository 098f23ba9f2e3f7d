"""The analysis cache: per-sentence activations and metrics on local disk, keyed by the store's identity."""
