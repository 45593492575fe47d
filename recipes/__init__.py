"""What sits on top of the model: config files, run folders, data, training, generation and the CLI."""
