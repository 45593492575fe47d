"""One run of a fine-tuning sweep: the variant's fine-tuning of the sweep's ``finetune_from``, and
its result read back from the epochs' metrics (validation loss, and accuracy for a classifier)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from gptzoo.recipes.config.finetune import FINETUNE_KINDS, ClassifierConfig
from gptzoo.recipes.config.finetune_files import validate_finetune_config
from gptzoo.recipes.finetuning import finetune_classifier, finetune_instruct
from gptzoo.recipes.research.sweep.results import RunResult
from gptzoo.recipes.runs.metrics import read_metrics

if TYPE_CHECKING:
    from gptzoo.recipes.research.sweep.execute import RunTask


def finetuned_result(task: RunTask) -> RunResult:
    """Fine-tune as ``task`` says into its folder; done, or diverged when the last validation loss is not finite."""
    config = validate_finetune_config(FINETUNE_KINDS[task.config["kind"]], task.config, f"{task.folder} config")
    started = time.perf_counter()
    if isinstance(config, ClassifierConfig):
        finetune_classifier(config, task.finetune_from, task.folder)
    else:
        finetune_instruct(config, task.finetune_from, task.folder)
    epochs = [r for r in read_metrics(task.folder) if "val_loss" in r]
    final = epochs[-1]["val_loss"]
    status = "done" if math.isfinite(final) else "diverged"
    return RunResult(
        task.variant,
        task.seed,
        status,
        "" if status == "done" else f"final validation loss {final}",
        steps=epochs[-1]["step"],
        final_val_loss=final,
        best_val_loss=min(r["val_loss"] for r in epochs),
        final_val_accuracy=epochs[-1].get("val_acc"),
        wall_s=time.perf_counter() - started,
    )
