"""Statistics of per-sentence activations against the labels: metrics, pooling, permutations, probes, folds."""
