"""Reading the language model: finding and loading it, naming it, and reading its activations at sites."""
