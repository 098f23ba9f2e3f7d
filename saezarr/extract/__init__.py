"""Building a store: CSV → fragments → residual stream → SAE latents, written unit by unit."""
