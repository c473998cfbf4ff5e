"""Loading weights: files that never run code, and weights that must fit the model."""
