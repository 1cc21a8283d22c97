"""castream training: the CA-Stream model, its data and the training command."""

__version__ = "0.1.0"
