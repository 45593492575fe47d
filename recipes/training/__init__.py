"""Training: the pretraining loop, its devices and optimiser, checkpoints, distributed launch."""
