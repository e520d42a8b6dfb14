"""Data: document sources (files, folders, Hub datasets, the built-in corpus) and batching.

Not part of the model's remote-code closure: nothing here ships next to the weights.
"""
