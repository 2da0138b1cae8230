"""hpsearch: coarse-to-fine hyperparameter search for PyTorch models, with every trial in SQL."""

__version__ = "0.1.0"
