"""The run folder: the unit every command reads and writes (config, weights, tokenizer, metrics),
committed through a manifest with a journal and a writer lock."""
