"""Generation: sampling, the decoding loop with the KV cache (generate), prompts and streamed text (text)."""
