"""mistral-nemo: a self-hosted runtime for the Mistral NeMo 12B model family."""

__version__ = "0.1.0"
