"""Fine-tuning configs: one TOML file per fine-tuning, validated as the run config is.

A classifier config (the book's chapter 6) and an instruction config (chapter 7) share ``[train]``
(how long and how fast, what trains) and ``[lora]`` (an adapter instead of the weights); each has
its own ``[data]`` (how examples are read, split, labelled, prompted and batched). Every option
that shapes the result is a field, and the validated config is saved in the fine-tuned run's
config.json under ``finetune``, so the run says how to reproduce itself.

Checks that involve two fields name them as the user wrote them: the command line's shorthand
flags arrive in the validation context (``flags``: dotted field -> flag), so an error about
``--lora-alpha`` says ``--lora-alpha``, one about ``lora.alpha`` in a TOML says ``lora.alpha``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gptzoo.plugins.heads import ClassifierParams

# A seed torch's generators take: 64 bits, signed or not.
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]

TRAINABLE = ("none", "head", "last-block", "last-n", "all")
Trainable = Literal["none", "head", "last-block", "last-n", "all"]
Pooling = ClassifierParams.model_fields["pooling"].annotation


def given_as(info: ValidationInfo, path: str) -> str:
    """How the user set the field at ``path``: the flag that set it (``--lora-alpha``), else its dotted path."""
    return (info.context or {}).get("given", {}).get(path, path)


def written_as(info: ValidationInfo, path: str) -> str:
    """How the user can set the field at ``path`` here: the command's flag for it (``--lora-rank``), else its dotted path."""
    return (info.context or {}).get("flags", {}).get(path) or given_as(info, path)


def said(info: ValidationInfo, path: str, value: Any) -> str:
    """The setting as the user wrote it: ``--train none`` on the command line, ``train.trainable = 'none'`` in a config."""
    flag = given_as(info, path)
    return f"{flag} {value}" if flag != path else f"{path} = {value!r}"


def fractions(value: Any, n: int) -> Any:
    """``"0.7,0.1,0.2"`` (a flag's or --set's text) as a list of numbers; anything else as it is."""
    if isinstance(value, str):
        try:
            return [float(part) for part in value.split(",")]
        except ValueError:
            return [math.nan] * n  # not numbers: the field's own check refuses it
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- [train] --------------------------------------------------------------------------------


class FinetuneTraining(_Section):
    """How long and how fast fine-tuning goes, and which weights train. AdamW at a constant learning
    rate; loss (and accuracy) on ``eval_batches`` batches of train and validation after each epoch."""

    epochs: int = Field(1, description="passes over the training split")
    batch_size: int = Field(8, description="examples per step")
    lr: float = Field(5e-5, description="AdamW learning rate, constant")
    weight_decay: float = Field(0.1, description="AdamW's decoupled weight decay")
    weight_decay_scope: Literal["matrices", "all"] = Field(
        "matrices",
        description="matrices: embeddings and linear weights, not biases and norms; all: every parameter (the book's AdamW)",
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's betas (the book's fine-tuning: 0.9, 0.999)")
    grad_clip: float | None = Field(
        1.0, description="clip the gradient norm to this; 0 turns clipping off, as the book"
    )
    drop_last: bool = Field(
        False, description="skip each epoch's last, smaller batch, as the book's DataLoader(drop_last=True)"
    )
    eval_batches: int = Field(5, description="batches of the train and validation splits evaluated after each epoch")
    seed: Seed = Field(123, description="the split, shuffling, dropout, and the new head's and LoRA's initialisation")
    trainable: Trainable | None = Field(
        None,
        description="what trains: none (the LoRA adapters only), head, last-block (with the final norm and the head), "
        "last-n (see last_n), all; unset: the fine-tuning's default, written into the run",
    )
    last_n: int = Field(2, description="with trainable = last-n: how many of the last transformer blocks train")
    device: str = Field("auto", description="cpu, cuda, mps or auto (cuda, then mps, then cpu)")

    @field_validator("epochs", "batch_size", "eval_batches", "last_n")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("give at least 1")
        return value

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: float) -> float:
        if not value > 0 or math.isinf(value):  # also nan
            raise ValueError("give a positive learning rate")
        return value

    @field_validator("weight_decay", "grad_clip")
    @classmethod
    def _zero_or_positive(cls, value: float | None) -> float | None:
        if value is not None and (not value >= 0 or math.isinf(value)):  # also nan
            raise ValueError("give 0 or a positive number")
        return value

    @field_validator("grad_clip")
    @classmethod
    def _zero_is_off(cls, value: float | None) -> float | None:
        return value or None  # TOML has no null: 0 says "no clipping"

    @field_validator("betas", mode="before")
    @classmethod
    def _two_betas(cls, value: Any) -> Any:
        value = fractions(value, 2)
        if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(0 <= b < 1 for b in value):
            raise ValueError("give two numbers in [0, 1), e.g. 0.9,0.999")
        return value


class ClassifierTraining(FinetuneTraining):
    """How long and how fast classifier fine-tuning goes, and which weights train besides the new head."""

    epochs: int = Field(5, description="passes over the training split")


class InstructTraining(FinetuneTraining):
    """How long and how fast instruction fine-tuning goes, and which weights train."""

    epochs: int = Field(2, description="passes over the training split")


# ---- [lora] ---------------------------------------------------------------------------------


class LoRAConfig(_Section):
    """Train low-rank adapters on the targeted linear layers instead of the weights themselves."""

    rank: int = Field(description="the adapter's rank R")
    alpha: float | None = Field(
        None,
        description="the update is scaled by alpha / R (convention book: by alpha); unset: R, written into the run",
    )
    convention: Literal["gptzoo", "book"] = Field(
        "gptzoo",
        description="gptzoo: scale alpha / rank, A initialised with fan-in = in_features, as the LoRA paper and peft; "
        "book: scale alpha, A of shape (in, rank) initialised with fan-in = rank, as the book's appendix E",
    )
    targets: list[str] = Field(
        ["qkv", "out_proj", "ffn"],
        description="linear layers to adapt: qkv (attention projections), out_proj (attention output), ffn "
        "(feed-forward linears), or a glob over module names such as 'blocks.3.*' or 'head.out'",
    )

    @model_validator(mode="before")
    @classmethod
    def _alpha_defaults_to_rank(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "rank" not in data:
            given = next(iter(data), "alpha")
            raise ValueError(f"{given_as(info, f'lora.{given}')} needs {written_as(info, 'lora.rank')}")
        if isinstance(data, dict) and data.get("alpha") is None and isinstance(data["rank"], int):
            data = {**data, "alpha": float(data["rank"])}
        return data

    @field_validator("rank")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("give at least 1")
        return value

    @field_validator("alpha")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and (not value > 0 or math.isinf(value)):  # also nan
            raise ValueError("give a positive number (the update is scaled by alpha / rank)")
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        if isinstance(value, list) and not value:
            raise ValueError("give at least one target, e.g. qkv,out_proj,ffn")
        return value


# ---- [data] ---------------------------------------------------------------------------------


class FinetuneData(_Section):
    """Where the examples come from, how they split, how long they may be."""

    path: str = Field(description="the data file")
    split: tuple[float, float, float] = Field(description="fractions of the data for training, validation and test")
    split_order: Literal["shuffled", "book"] = Field(
        "shuffled", description="shuffled: Python's random.Random(train.seed) shuffles, then the splits are cut"
    )
    max_length: int | None = Field(None, description="truncate every example to this many tokens; unset: the context")

    @field_validator("split", mode="before")
    @classmethod
    def _three_fractions(cls, value: Any) -> Any:
        value = fractions(value, 3)
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(isinstance(f, (int, float)) and f > 0 for f in value)
            or not sum(value) <= 1 + 1e-9  # also nan
        ):
            raise ValueError("give three positive fractions that sum to at most 1, e.g. 0.7,0.1,0.2")
        return value

    @field_validator("max_length")
    @classmethod
    def _two_tokens(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError("give at least 2 tokens")
        return value


class ClassifierData(FinetuneData):
    """label<TAB>text lines (the SMS Spam Collection's format) or a CSV with a header."""

    path: str = Field(
        description="label<TAB>text per line, or a .csv file with a header (see text_column, label_column)"
    )
    split: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="fractions for training, validation, test")
    split_order: Literal["shuffled", "book"] = Field(
        "shuffled",
        description="shuffled: Python's random.Random(train.seed) shuffles, balance keeps file order; book: numpy's "
        "RandomState(train.seed) as the book's df.sample(random_state=123), and balance as its create_balanced_dataset",
    )
    text_column: str = Field("text", description="CSV column holding the text")
    label_column: str = Field("label", description="CSV column holding the label")
    balance: bool = Field(False, description="undersample every class to the size of the smallest before splitting")
    quoting: Literal["none", "csv"] = Field(
        "none",
        description="in a label<TAB>text file: none, every line is one example; csv, a text opening with a double quote "
        "runs to the closing quote across lines, as the book's pandas.read_csv(sep='\\t') reads it",
    )
    pad_to: Literal["batch", "train"] = Field(
        "batch",
        description="pad each batch to its longest example (batch) or every batch to the longest training example "
        "(train, the book's SpamDataset)",
    )

    @model_validator(mode="after")
    def _options_that_apply(self, info: ValidationInfo) -> ClassifierData:
        csv = Path(self.path).suffix.lower() == ".csv"
        for name, default in (("text_column", "text"), ("label_column", "label")):
            value = getattr(self, name)
            if value != default and not csv:
                raise ValueError(
                    f"{said(info, f'data.{name}', value)}: {self.path} is read as label<TAB>text lines, which have no "
                    "columns; it applies to a .csv file with a header"
                )
        if self.quoting != "none" and csv:
            raise ValueError(
                f"{said(info, 'data.quoting', self.quoting)}: applies to a label<TAB>text file; {self.path} is read as "
                "CSV, with CSV's quoting"
            )
        return self


class InstructData(FinetuneData):
    """A JSON list of {instruction, input, output} entries."""

    path: str = Field(description='a JSON list of {"instruction", "input", "output"} entries (input may be empty)')
    split: tuple[float, float, float] = Field((0.85, 0.05, 0.1), description="fractions for training, validation, test")
    split_order: Literal["shuffled", "book"] = Field(
        "shuffled",
        description="shuffled: Python's random.Random(train.seed) shuffles, then train, validation, test are cut; "
        "book: file order, cut as the book's chapter 7: train first, then test, then validation",
    )
    prompt_style: Literal["alpaca"] = Field("alpaca", description="how an entry becomes a prompt: the Alpaca format")
    mask_prompt: bool = Field(False, description="train on the responses only: the prompt tokens are not targets")


class InstructTest(_Section):
    """The test split's responses, written to responses.json after training."""

    max_new_tokens: int = Field(256, description="longest test response, in tokens")
    limit: int | None = Field(None, description="generate responses for the first N test entries only")

    @field_validator("max_new_tokens")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError("give at least 1")
        return value

    @field_validator("limit")
    @classmethod
    def _not_negative(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("give 0 or more test entries")
        return value


# ---- the configs ----------------------------------------------------------------------------


class FinetuneConfig(_Section):
    """What both fine-tunings share; ``train.trainable`` unset becomes the kind's default."""

    DEFAULT_TRAINABLE: ClassVar[dict[bool, str]]  # train.trainable unset, by whether LoRA is on: each kind's

    lora: LoRAConfig | None = Field(None, description="train a LoRA adapter instead of the weights; absent: no LoRA")

    @model_validator(mode="before")
    @classmethod
    def _default_trainable(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        train = data.get("train", {})
        train = train.model_dump() if isinstance(train, BaseModel) else train
        if isinstance(train, dict) and train.get("trainable") is None:
            trainable = cls.DEFAULT_TRAINABLE[data.get("lora") is not None]
            data = {**data, "train": {**train, "trainable": trainable}}
        return data

    @model_validator(mode="after")
    def _something_trains(self, info: ValidationInfo) -> FinetuneConfig:
        if self.train.trainable == "none" and self.lora is None:  # type: ignore[attr-defined]
            raise ValueError(
                f"{said(info, 'train.trainable', 'none')} trains nothing without {written_as(info, 'lora.rank')}; "
                "choose what trains"
            )
        return self


class ClassifierConfig(FinetuneConfig):
    """Fine-tune a run as a text classifier: its LM head replaced by a classifier over the data's labels."""

    DEFAULT_TRAINABLE: ClassVar[dict[bool, str]] = {False: "last-block", True: "head"}

    kind: Literal["classifier"] = Field("classifier", description="which fine-tuning this config is for")
    pooling: Pooling = Field(  # type: ignore[valid-type]
        ClassifierParams.model_fields["pooling"].default,
        description=f"what the classifier head reads: {ClassifierParams.model_fields['pooling'].description}",
    )
    data: ClassifierData
    train: ClassifierTraining = ClassifierTraining()

    @model_validator(mode="after")
    def _book_order_takes_32_bits(self, info: ValidationInfo) -> ClassifierConfig:
        if self.data.split_order == "book" and not 0 <= self.train.seed < 2**32:
            raise ValueError(
                f"{said(info, 'train.seed', self.train.seed)}: data.split_order = 'book' draws with numpy's "
                f"RandomState, which takes a seed from 0 to {2**32 - 1}"
            )
        return self


class InstructConfig(FinetuneConfig):
    """Fine-tune a language model to follow instructions, then answer the test entries."""

    DEFAULT_TRAINABLE: ClassVar[dict[bool, str]] = {False: "all", True: "none"}

    kind: Literal["instruct"] = Field("instruct", description="which fine-tuning this config is for")
    data: InstructData
    train: InstructTraining = InstructTraining()
    test: InstructTest = InstructTest()


AnyFinetuneConfig = Annotated[ClassifierConfig | InstructConfig, Field(discriminator="kind")]
C = TypeVar("C", ClassifierConfig, InstructConfig)
FINETUNE_KINDS: dict[str, type[ClassifierConfig] | type[InstructConfig]] = {
    "classifier": ClassifierConfig,
    "instruct": InstructConfig,
}


class FineTuning(_Section):
    """How a fine-tuned run was made (config.json's ``finetune``): where it started and its whole config."""

    base: str = Field(description="the run folder (or preset) the fine-tuning started from")
    config: AnyFinetuneConfig
