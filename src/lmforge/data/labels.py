"""Label values shared by data, losses and metrics."""

# The label of a position that no loss or metric counts (padding, special tokens, later
# subwords, unmasked tokens): the ignore index of torch's cross-entropy and of transformers.
IGNORE_INDEX = -100
