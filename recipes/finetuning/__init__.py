"""Fine-tuning: classification and instruction heads on a pretrained run, LoRA."""
