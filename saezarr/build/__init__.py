"""Building a store: fragments through the model's sites and the SAEs into the store, written unit by unit."""
