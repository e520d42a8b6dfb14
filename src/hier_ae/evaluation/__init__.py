"""Evaluation: reconstruction (autoencoder) and prediction (causal LM) reports, kept apart.

Not part of the model's remote-code closure: nothing here ships next to the weights.
"""
