"""The per-step schedule: which steps log, evaluate, sample and checkpoint, at hand-worked steps."""

from gptzoo.recipes.config.schema import TrainConfig
from gptzoo.recipes.training.step_plan import plan_step


def steps_that(what, n_steps, **train_fields):
    """The steps 1..n_steps whose plan says ``what`` (log, evaluate, sample or checkpoint)."""
    cfg = TrainConfig(max_steps=n_steps, **train_fields)
    return [step for step in range(1, n_steps + 1) if getattr(plan_step(step, n_steps, cfg), what)]


def test_the_schedule_evaluates_checkpoints_and_logs_at_hand_worked_steps():
    # eval_interval 5 over 12 steps: 5, 10, and the last step always
    assert steps_that("evaluate", 12, eval_interval=5) == [5, 10, 12]
    assert steps_that("checkpoint", 12, eval_interval=5) == [5, 10, 12]  # checkpoints follow evaluations
    assert steps_that("checkpoint", 12, eval_interval=5, checkpoint_interval=0) == [12]
    assert steps_that("checkpoint", 12, eval_interval=5, checkpoint_interval=3) == [3, 6, 9, 12]
    # the progress bar every 10 steps, and at every evaluation and checkpoint
    assert steps_that("log", 12, eval_interval=5, checkpoint_interval=3) == [3, 5, 6, 9, 10, 12]
    assert steps_that("log", 30, eval_interval=1000) == [10, 20, 30]
    assert steps_that("sample", 12, eval_interval=5, sample_tokens=8) == [5, 10, 12]
    assert steps_that("sample", 12, eval_interval=5, sample_tokens=0) == []


def test_before_the_first_step_only_eval_at_start_evaluates():
    quiet = plan_step(0, 12, TrainConfig(max_steps=12, eval_interval=5, sample_tokens=8))
    assert not (quiet.evaluate or quiet.sample or quiet.log or quiet.checkpoint)
    first = plan_step(0, 12, TrainConfig(max_steps=12, eval_interval=5, sample_tokens=8, eval_at_start=True))
    assert first.evaluate and first.sample and not (first.log or first.checkpoint)
