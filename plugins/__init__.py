"""Built-in variants, one module per family, registered through the same hook as third-party plugins."""
