"""A worked example of a user's own model and data for hpsearch (see studies/user_model.yaml).

hpsearch imports ``studies.user_example.models:build`` and ``studies.user_example.data:load`` with
the working directory on ``sys.path``, so running from the repository root needs no install. To use
your own package elsewhere, run from the directory that holds it, or ``pip install -e`` it.
"""
