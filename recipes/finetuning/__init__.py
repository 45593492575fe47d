"""Fine-tuning: classification and instruction heads on a pretrained run, LoRA.

``finetune_classifier(config, base, out)`` and ``finetune_instruct(config, base, out)`` are the two
fine-tunings from start to finish; their configs are gptzoo.recipes.config.finetune's models."""

from gptzoo.recipes.finetuning.pipelines import finetune_classifier, finetune_instruct

__all__ = ["finetune_classifier", "finetune_instruct"]
