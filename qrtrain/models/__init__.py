"""Base models, shared by every area: the model cache, loading models and tokenizers, the tiny test
models, and the chat templates.

    qrtrain train model=tiny training.max_steps=2     # builds the tiny model into the cache once
"""
