"""Code shards: a corpus encoded once into parquet shards of codes, and training rows built from them.

Not part of the model's remote-code closure: nothing here ships next to the weights.
"""
