"""Metrics to TensorBoard as well (``train.tensorboard = true``); metrics.jsonl stays the record."""

from __future__ import annotations

from pathlib import Path

from gptzoo.core import GptzooError

FOLDER = "tensorboard"  # inside the run folder: point `tensorboard --logdir` at a run, or at a sweep's runs/


class TensorBoardLog:
    """Each metrics record's numbers as scalars at its step, in DIR/tensorboard."""

    def __init__(self, out: Path, start_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GptzooError(
                "train.tensorboard = true needs TensorBoard; install the tensorboard extra: pip install 'gptzoo[tensorboard]'"
            ) from None
        # A resumed run drops what an earlier session logged after its checkpoint, as metrics.jsonl does.
        self.writer = SummaryWriter(str(Path(out) / FOLDER), purge_step=start_step + 1 if start_step else None)

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and _is_number(value):
                self.writer.add_scalar(key, value, record["step"])
            elif isinstance(value, list):  # per layer (max_attention_logit): key/layer<i> where a layer has one
                for i, v in enumerate(value):
                    if _is_number(v):
                        self.writer.add_scalar(f"{key}/layer{i}", v, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
