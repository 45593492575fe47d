"""Hugging Face checkpoints in and out of gptzoo, one table per model family."""
