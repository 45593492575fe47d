"""Generation: sampling, the decoding loop with the KV cache, streaming text."""
