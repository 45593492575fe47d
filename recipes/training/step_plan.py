"""Which steps log, evaluate, sample and checkpoint: a pure function of the step and the config,
which the loop (loop.py) follows after each optimizer step."""

from __future__ import annotations

from dataclasses import dataclass

from gptzoo.recipes.config.schema import TrainConfig

LOG_EVERY = 10  # steps between progress-bar updates, the only host-device syncs between evaluations


@dataclass(frozen=True)
class StepPlan:
    """What follows an optimizer step besides the step itself."""

    log: bool  # update the progress bar: read the loss and the divergence flag back (and agree to stop)
    evaluate: bool  # score fixed train and validation windows into metrics.jsonl
    sample: bool  # print a sample of generated text, at evaluations when train.sample_tokens asks for one
    checkpoint: bool


def plan_step(step: int, n_steps: int, train: TrainConfig) -> StepPlan:
    """What follows step ``step`` of ``n_steps`` (counted once it is taken; step 0 is before the first).

    Evaluations come every eval_interval steps, checkpoints with them or every checkpoint_interval
    steps (0: none until the end); the last step always does both; the progress bar updates every
    LOG_EVERY steps and whenever the step evaluates or checkpoints. Before the first step only
    train.eval_at_start evaluates.
    """
    if step == 0:
        return StepPlan(
            log=False,
            evaluate=train.eval_at_start,
            sample=train.eval_at_start and train.sample_tokens > 0,
            checkpoint=False,
        )
    last = step == n_steps
    evaluate = step % train.eval_interval == 0 or last
    interval = train.checkpoint_interval
    checkpoint = last or (evaluate if interval is None else bool(interval) and step % interval == 0)
    log = step % LOG_EVERY == 0 or evaluate or checkpoint
    return StepPlan(log=log, evaluate=evaluate, sample=evaluate and train.sample_tokens > 0, checkpoint=checkpoint)
