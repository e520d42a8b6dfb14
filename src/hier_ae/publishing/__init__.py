"""Publishing: the model card (rendered from the packaged template) and the Hub upload.

Not part of the model's remote-code closure: nothing here ships next to the weights.
"""
