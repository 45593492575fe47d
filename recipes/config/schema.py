"""The run config: one TOML file with [model], [data] and [train]; saved as config.json in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gptzoo.core import ConfigError, ModelConfig, Task, config_error
from gptzoo.recipes.config.finetune import FineTuning, Seed
from gptzoo.recipes.config.presets import find_config, find_preset
from gptzoo.recipes.config.reading import apply_overrides, read_toml
from gptzoo.recipes.runs.files import read_json
from gptzoo.registry import Registry, default_registry

BUILTIN_CORPUS = "builtin:pydoc"


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    source: str = Field(
        BUILTIN_CORPUS,
        description=f"a text, JSON Lines (.jsonl) or Parquet (.parquet) file, a folder of them, a Hub dataset (hf://datasets/ORG/NAME[@REVISION][?config=..&split=..]), or {BUILTIN_CORPUS!r} (ships with Python)",
    )
    text_field: str = Field(
        "text",
        min_length=1,
        description="the field (JSON Lines) or column (Parquet, Hub dataset) holding each record's text",
    )
    task: SerializeAsAny[Task] | None = Field(
        None,
        description='a diagnostic task generated from data.seed instead of a corpus: { name = "mqar", ... }, a task the registry has (`gptzoo plugins`)',
    )
    stride: int | None = Field(None, gt=0, description="None: context_length (windows do not overlap)")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = Field(
        0, ge=0, lt=2**64, description="split and shuffling order; the same for every run that shares it (64 bits)"
    )
    cache_dir: str | None = Field(None, description="token cache; None: $GPTZOO_CACHE or ~/.cache/gptzoo")

    @field_validator("task", mode="before")
    @classmethod
    def _resolve_task(cls, raw: Any, info: ValidationInfo) -> Any:
        """Validate ``{ name = ..., ... }`` by the registered task of that name (field errors keep their paths)."""
        if raw is None or isinstance(raw, Task):
            return raw
        return _task_class(raw, info).model_validate(raw)


def _task_class(raw: Any, info: ValidationInfo) -> type[Task]:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ValueError('give the task as a table with its name: { name = "mqar", ... }')
    registry = (info.context or {}).get("registry")
    if registry is None:
        raise ValueError(
            "tasks are resolved against a registry: validate with validate_run_config or pass context={'registry': ...}"
        )
    return registry.task(raw["name"])


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(
        None, gt=0, description="token budget: optimizer steps = max_tokens / tokens per step"
    )
    max_flops: float | None = Field(
        None,
        gt=0,
        description="compute budget: steps = max_flops / (the model's training FLOPs per token × tokens per step)",
    )
    batch_size: int = Field(
        8, gt=0, description="windows per micro-batch on each process; a step is batch_size × grad_accum × processes"
    )
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at lr × this")
    warmup_steps: int = Field(0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW's decoupled weight decay, on the parameters weight_decay_scope names"
    )
    weight_decay_scope: Literal["matrices", "all"] = Field(
        "matrices",
        description="matrices: embeddings and linear weights only, not biases and norms; all: every parameter (the book's AdamW)",
    )
    grad_clip: float | None = Field(
        1.0,
        ge=0,
        description="clip the gradient norm to this; 0 (or null) turns clipping off, as in the book's chapter 5",
    )
    z_loss: float = Field(
        0.0,
        ge=0,
        description="weight of the z-loss on the output logits: z_loss × log(Z)² averaged over the tokens (PaLM's 1e-4); "
        "metrics.jsonl logs log(Z)² as aux_z_loss; 0: off",
    )
    eval_interval: int = Field(50, gt=0)
    eval_at_start: bool = Field(
        False, description="also evaluate the untrained model, logged as step 0 (the book prints its initial loss)"
    )
    checkpoint_interval: int | None = Field(
        None,
        ge=0,
        description="steps between checkpoints; None: at every evaluation; 0: only at the end (and when stopped)",
    )
    eval_batches: int = Field(10, gt=0)
    seed: Seed = Field(0, description="initialisation and dropout (torch takes 64 bits)")
    device: str = Field("auto", description="auto picks cuda, then mps, then cpu")
    dtype: Literal["float32", "bfloat16"] = "float32"
    compile: bool = False
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: ddp copies the model to every rank, fsdp shards it across them"
    )
    sample_prompt: str = "The"
    sample_tokens: int = Field(32, ge=0)
    tensorboard: bool = Field(
        False,
        description="also write the metrics to DIR/tensorboard (the tensorboard extra); metrics.jsonl stays the record",
    )
    init_from: str | None = Field(
        None,
        description="a run folder whose weights start this run (an imported checkpoint, say), not its optimizer or step; tensors both "
        "models have must agree in shape, a component swapped in keeps its fresh initialisation, one swapped out is left behind; the tokenizer is the source's",
    )

    @field_validator("grad_clip")
    @classmethod
    def _zero_is_off(cls, value: float | None) -> float | None:
        return value or None  # TOML has no null: 0 says "no clipping"

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        given = [k for k in ("max_steps", "epochs", "max_tokens", "max_flops") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of max_steps, epochs, max_tokens, max_flops; got {', '.join(given)}")
        if not given:
            raise ValueError("give a training budget: max_steps, epochs, max_tokens or max_flops")
        return self


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: ModelConfig
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig(max_steps=100)
    finetune: FineTuning | None = Field(
        None, description="a fine-tuned run's base and fine-tuning config, which reproduce it; absent in other runs"
    )

    @model_validator(mode="before")
    @classmethod
    def _task_tokenizer(cls, data: Any, info: ValidationInfo) -> Any:
        """A task's ids are plain integers: the tokenizer, unless given, is ``integers`` sized to the task."""
        section = data.get("data") if isinstance(data, dict) else None
        task = section.get("task") if isinstance(section, dict) else None
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(task, dict) and isinstance(model, dict) and "tokenizer" not in model:
            try:
                vocab = _task_class(task, info).model_validate(task).vocab_size
            except (ValueError, ValidationError):
                return data  # the field's own validation reports it
            data = {**data, "model": {**model, "tokenizer": {"name": "integers", "vocab_size": vocab}}}
        return data

    @model_validator(mode="after")
    def _task_fits(self) -> RunConfig:
        task = self.data.task
        if task is None:
            return self
        if self.data.source != BUILTIN_CORPUS:
            raise ValueError(
                f"data.source = {self.data.source!r} and data.task: give one data source, the corpus or the task"
            )
        try:
            task.check(self.model.context_length)
        except ValueError as err:
            raise ValueError(
                f"data.task '{task.name}' at model.context_length = {self.model.context_length}: {err}"
            ) from None
        tokenizer = self.model.tokenizer
        if tokenizer.impl.needs_fit or tokenizer.build().vocab_size < task.vocab_size:
            raise ValueError(
                f"data.task '{task.name}' uses ids 0 .. {task.vocab_size - 1}: model.tokenizer must have a fixed vocabulary covering them; leave the tokenizer out to get {{ name = \"integers\", vocab_size = {task.vocab_size} }}"
            )
        return self


def validate_run_config(data: dict[str, Any], source: str, registry: Registry | None = None) -> RunConfig:
    try:
        return RunConfig.model_validate(data, context={"registry": registry or default_registry()})
    except ValidationError as err:
        raise config_error(err, source, RunConfig) from None


def load_run_config(path: str | Path, overrides: list[str] = (), registry: Registry | None = None) -> RunConfig:
    """Read a TOML (or a run folder's config.json, or a preset by name; a TOML may extend another), apply ``key=value`` overrides, validate."""
    path = find_config(path)
    if path.suffix == ".json" or path.is_dir():
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise ConfigError(
                f"{path}: a folder without config.json, so not a run folder; give a run folder or a TOML config"
                if path.is_dir()
                else f"{file}: no such config file"
            )
        data = read_json(file, ConfigError)
    else:
        data = read_toml(path, find_base=find_preset)
    data = apply_overrides(data, list(overrides))
    if "model" not in data:
        raise ConfigError(f"{path}: has no [model] table")
    return validate_run_config(data, str(path), registry)
