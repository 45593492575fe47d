"""Data: corpora read as documents, tokenized once into a cache, cut into training windows."""
