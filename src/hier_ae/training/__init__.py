"""Training: the staged schedule (`stages`), run-config checking, checkpoints and the NaN policy.

Not part of the model's remote-code closure: nothing here ships next to the weights.
"""
