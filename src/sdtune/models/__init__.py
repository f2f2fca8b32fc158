"""Model loading, the built-in tiny models, and LoRA helpers."""
