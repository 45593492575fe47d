"""Interop: Hugging Face checkpoints in and out, GPT-2 downloads, the book's own model files."""
