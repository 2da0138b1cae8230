"""The PyTorch networks of the built-in model kinds. Importing any of these modules imports torch,
so only the builders in ``hpsearch.train.model_kinds`` import them, when a model is built."""
