"""Training the embedded model: corpus, tokenizer, FIM examples, block diffusion, the training run and export.

Training imports the runtime (architecture, forward, prompt layout); the runtime never imports training.
"""
