"""Models that learn modular arithmetic a∘b mod p and grok: MLP and transformers."""
