"""Benchmarks with EleutherAI's lm-evaluation-harness (the eval extra): its tasks on a run folder,
through the model class harness_lm registers with the harness as "gptzoo"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptzoo.core import GptzooError
from gptzoo.recipes.runs.folder import Run, commit_files, load_run

INSTALL = "pip install 'gptzoo[eval]'"
RESULTS = "lm_eval_results.json"


def lm_eval():  # noqa: ANN201 -- the module, imported on use: an optional extra
    try:
        import lm_eval
        import lm_eval.api.model
    except ImportError:
        raise GptzooError(f"gptzoo evaluate needs lm-evaluation-harness: {INSTALL}") from None
    return lm_eval


def harness_model(run: Run, batch_size: int = 8) -> Any:
    """The run as an lm-evaluation-harness model (a ``TemplateLM``)."""
    lm_eval()
    from gptzoo.recipes.research.harness_lm import GptzooLM

    return GptzooLM(run, batch_size)


def evaluate_run(
    folder: str | Path,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: int | None = None,
    include_path: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[dict[str, Any], str]:
    """Run the harness's ``tasks`` on a run folder; its results (committed to the folder as RESULTS) and their table."""
    harness = lm_eval()
    from lm_eval.tasks import TaskManager

    run = load_run(folder, device=device)
    manager = TaskManager(include_path=include_path)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else "; give --include-path DIR for your own task YAML files"
        raise GptzooError(f"--tasks: no task {unknown[0]!r} in lm-evaluation-harness{where}")
    results = harness.simple_evaluate(
        model=harness_model(run, batch_size),
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
    )
    from lm_eval.utils import make_table

    commit_files(folder, {RESULTS: json.dumps(results, indent=2, default=str) + "\n"})
    return results, make_table(results)
