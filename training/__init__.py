"""castream training: the CA-Stream model, its data and the training command."""
