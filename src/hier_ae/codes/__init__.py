"""What is built on a model's codes: code shards (a corpus encoded once into parquet shards of codes,
and training rows built from them) and the lossless codec (the codes plus the bytes range-coded under
the decoder's predictions).

Not part of the model's remote-code closure: nothing here ships next to the weights.
"""
