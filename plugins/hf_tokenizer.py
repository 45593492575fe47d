"""The ``hf`` tokenizer: a checkpoint's own tokenizer.json, read with Hugging Face's ``tokenizers``.

gptzoo import-hf writes the checkpoint's tokenizer.json into the run folder as this tokenizer's
state (training a config from scratch fits a byte-level BPE with the same library instead), and its special tokens (tokenizer_config.json, generation_config.json) and chat template
into the params. Encoding adds BOS where the checkpoint's tokenizer.json says (its post-processor, as transformers); generation stops at
any of the checkpoint's EOS ids (the first is its end-of-text id). Chat templates are rendered with jinja2 in the sandbox
and with the options transformers' ``apply_chat_template`` uses, so a prompt reads token for
token as transformers would build it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import Field

from gptzoo.core import GptzooError, Params, Tokenizer
from gptzoo.registry import hookimpl

MISSING_LIBRARY = "the 'hf' tokenizer needs the tokenizers and jinja2 packages: pip install 'gptzoo[hf]'"


class HFTokenizerParams(Params):
    bos_token: str | None = Field(None, description="the beginning-of-sequence token (tokenizer_config.json)")
    eos_token: str | None = Field(None, description="the end-of-sequence token (tokenizer_config.json)")
    pad_token: str | None = None
    eos_token_ids: list[int] = Field(
        default_factory=list,
        description="ids that end generation (generation_config.json's eos_token_id); the first is the end-of-text id",
    )
    chat_template: str | None = Field(None, description="the checkpoint's jinja2 chat template; gptzoo chat renders it")
    vocab_size: int = Field(
        4096,
        gt=256,
        description="tokens a byte-level BPE learns when fitted on a corpus (training a config from scratch); an imported checkpoint's tokenizer.json has its own",
    )


class HFTokenizer(Tokenizer):
    """A tokenizer.json (BPE, WordPiece, Unigram, ...) as the checkpoint ships it."""

    Params = HFTokenizerParams
    lossless = False
    needs_fit = True  # its vocabulary is state saved with the run: the checkpoint's, or one learned on the corpus

    def __init__(self, params: HFTokenizerParams):
        super().__init__(params)
        self._json: dict | None = None

    @cached_property
    def _tokenizer(self):
        if self._json is None:
            raise GptzooError(
                "the 'hf' tokenizer reads the checkpoint's tokenizer.json: gptzoo import-hf puts it in the run folder"
            )
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise GptzooError(MISSING_LIBRARY) from None
        return Backend.from_str(json.dumps(self._json))

    @property
    def is_fitted(self) -> bool:
        return self._json is not None

    def fit(self, text: str) -> None:
        """Learn a byte-level BPE of ``vocab_size`` tokens on ``text`` with the tokenizers library (GPT-2's scheme)."""
        try:
            from tokenizers import Tokenizer as Backend
            from tokenizers import decoders, models, pre_tokenizers, trainers
        except ImportError:
            raise GptzooError(MISSING_LIBRARY) from None
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.params.vocab_size,
            special_tokens=[self.EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator([text], trainer)
        self.load_state(json.loads(backend.to_str()))

    def state(self) -> dict | None:
        return self._json

    def load_state(self, state: dict) -> None:
        self._json = state
        self.__dict__.pop("_tokenizer", None)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    @property
    def eot_id(self) -> int:
        if self.params.eos_token_ids:
            return self.params.eos_token_ids[0]
        eos = self._id(self.params.eos_token or self.EOT)
        if eos is None:
            raise GptzooError("this 'hf' tokenizer has no end-of-sequence token (eos_token or eos_token_ids)")
        return eos

    @property
    def stop_ids(self) -> tuple[int, ...]:
        # Every id of generation_config.json's eos_token_id ends a turn, as in transformers' generate
        # (Llama 3's chat turns end at <|eot_id|>, its second).
        return tuple(self.params.eos_token_ids) or (self.eot_id,)

    def encode(self, text: str) -> list[int]:
        # tokenizer.json's post-processor adds BOS where the checkpoint expects it (Llama, Gemma), as in transformers.
        return self._tokenizer.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    # ---- chat templates ------------------------------------------------------------------------

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **variables: Any) -> str:
        """The conversation as the checkpoint's template writes it (as transformers' apply_chat_template);
        ``variables`` are the template's own options, as apply_chat_template's keyword arguments
        (``enable_thinking`` for Qwen3, ``reasoning_effort`` for gpt-oss)."""
        if self.params.chat_template is None:
            raise GptzooError("this checkpoint has no chat template")
        reserved = sorted(set(variables) & TEMPLATE_NAMES)
        if reserved:
            raise GptzooError(f"template variable '{reserved[0]}' is set by gptzoo itself; choose another name")
        special = {
            "bos_token": self.params.bos_token or "",
            "eos_token": self.params.eos_token or "",
            "pad_token": self.params.pad_token or "",
        }
        variables = {"tools": None, "documents": None} | variables  # defined, as apply_chat_template passes them
        template = _template(self.params.chat_template)
        deadline = time.monotonic() + TEMPLATE_SECONDS
        pieces, size = [], 0
        try:
            with _render_deadline(deadline):
                for piece in template.generate(
                    messages=messages, add_generation_prompt=add_generation_prompt, **special, **variables
                ):
                    size += len(piece)
                    if size > TEMPLATE_CHARS:
                        raise GptzooError(
                            f"the checkpoint's chat template wrote more than {TEMPLATE_CHARS} characters for one conversation; it cannot be a prompt"
                        )
                    _check_deadline()
                    pieces.append(piece)
        except GptzooError:
            raise
        except (
            Exception
        ) as err:  # the template is a stranger's program: whatever it raises is its failure, not gptzoo's
            raise GptzooError(
                f"the checkpoint's chat template failed on this conversation ({_template_error(err)})"
            ) from None
        return "".join(pieces)

    def encode_chat(self, messages: list[dict], **variables: Any) -> list[int]:
        """Ids of the rendered conversation; the template writes BOS itself, so none is added."""
        return self._tokenizer.encode(self.render_chat(messages, **variables), add_special_tokens=False).ids


TEMPLATE_NAMES = frozenset({"messages", "add_generation_prompt", "bos_token", "eos_token", "pad_token"})
TEMPLATE_SECONDS = 10.0  # no chat template needs longer for one conversation
TEMPLATE_CHARS = 1 << 24  # characters one rendering may write
TEMPLATE_POWER = 4096  # the largest integer exponent a template may use

_deadline: list[float] = []  # the rendering in progress's deadline, innermost last


@contextmanager
def _render_deadline(deadline: float) -> Iterator[None]:
    _deadline.append(deadline)
    try:
        yield
    finally:
        _deadline.pop()


def _check_deadline() -> None:
    if _deadline and time.monotonic() > _deadline[-1]:
        raise GptzooError(f"the checkpoint's chat template ran longer than {TEMPLATE_SECONDS:g} s on one conversation")


def _template_error(err: Exception) -> str:
    """A template's failure in words: its own message (raise_exception's), else the exception's kind and text."""
    import jinja2

    if type(err) is jinja2.exceptions.TemplateError:  # raise_exception: the template's author speaking
        return f"it says: {err}"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


PADDING = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})  # str methods writing to a width
WIDE = re.compile(r"\d{8}|\*")  # a format width of 8 digits or more, or one given as an argument ('%*s')


def _bounded_padding(pad, refusal: type[Exception]):
    """A padding filter (center, indent) refusing widths past TEMPLATE_CHARS."""

    def bounded(value, width=80, *args, **kwargs):
        if isinstance(width, int) and width > TEMPLATE_CHARS:
            raise refusal(f"padding to a width of {width} is too long")
        return pad(value, width, *args, **kwargs)

    return bounded


def _bounded_range(*args: int) -> Iterator[int]:
    """The sandbox's range, checking the deadline at every item: nested loops that write nothing still end."""
    from jinja2.sandbox import safe_range

    for i in safe_range(*args):
        _check_deadline()
        yield i


def _template(source: str):
    """The template compiled as transformers compiles chat templates (transformers.utils.chat_template_utils)."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        import jinja2.utils
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise GptzooError(MISSING_LIBRARY) from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def too_long(value) -> bool:
        return isinstance(value, (str, list, tuple, dict)) and len(value) > TEMPLATE_CHARS

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox with what a template can make bounded: a stranger's template must not fill the memory.

        Sequences made by ``*`` and ``+``, strings padded or formatted to a width (``ljust``, ``center``,
        ``'%*s'``, ``format``), replacements and what a call is given or returns stay under TEMPLATE_CHARS;
        the time limit is checked at every call, so growth by doubling (a namespace or a recursive macro)
        ends at the first value past the bound."""

        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            _check_deadline()
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if (
                        isinstance(seq, (str, list, tuple))
                        and isinstance(times, int)
                        and len(seq) * times > TEMPLATE_CHARS
                    ):
                        raise jinja2.exceptions.SecurityError(f"a sequence repeated {times} times is too long")
            if operator == "**" and isinstance(right, int) and isinstance(left, int) and abs(right) > TEMPLATE_POWER:
                raise jinja2.exceptions.SecurityError(f"the power {right} is too large")
            if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                if len(left) + len(right) > TEMPLATE_CHARS:
                    raise jinja2.exceptions.SecurityError("a sequence joined with + is too long")
            if operator == "%" and isinstance(left, str) and WIDE.search(left):
                raise jinja2.exceptions.SecurityError("a format's width is too large")
            return super().call_binop(context, operator, left, right)

        def wrap_str_format(self, value):
            """str.format, which the sandbox wraps when it is looked up: refused where a width is too large."""
            wrapped = super().wrap_str_format(value)
            if wrapped is not None and WIDE.search(value.__self__):

                def refuse(*args, **kwargs):
                    raise jinja2.exceptions.SecurityError("a format's width is too large")

                return refuse
            return wrapped

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 -- jinja2's own signature
            _check_deadline()
            given = (*args, *kwargs.values())
            if any(too_long(value) for value in given):
                raise jinja2.exceptions.SecurityError("a value given to a call is too long")
            owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                widths = [v for v in given if isinstance(v, int) and not isinstance(v, bool)]
                if name in PADDING and any(w > TEMPLATE_CHARS for w in widths):
                    raise jinja2.exceptions.SecurityError(f"str.{name} to a width of {max(widths)} is too long")
                if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                    grows = (
                        owner.count(args[0]) * (len(args[1]) - len(args[0])) if args[0] else len(owner) * len(args[1])
                    )
                    if len(owner) + grows > TEMPLATE_CHARS:
                        raise jinja2.exceptions.SecurityError("str.replace would write too long a string")
            result = super().call(__context, __obj, *args, **kwargs)
            if too_long(result):
                raise jinja2.exceptions.SecurityError("a call made too long a value")
            return result

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``, which marks the assistant's part for training (transformers'
        AssistantTracker): rendered as its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation])
    env.globals["range"] = _bounded_range
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = lambda *args, **kwargs: dict(*args, **kwargs)  # a call, not the type itself

    class BoundedNamespace(jinja2.utils.Namespace):
        """A namespace whose values stay under TEMPLATE_CHARS: doubling a string in a loop ends at the bound."""

        def __setitem__(self, name, value):
            _check_deadline()
            if too_long(value):
                raise jinja2.exceptions.SecurityError(f"a value set in a namespace ({name}) is too long")
            super().__setitem__(name, value)

    def namespace(*args, **kwargs):
        """jinja2's namespace, refusing the names a template could reach CPython's internals through."""
        attrs = dict(*args, **kwargs)
        hidden = [name for name in attrs if isinstance(name, str) and name.startswith("_")]
        if hidden:
            raise jinja2.exceptions.SecurityError(f"a namespace may not hold the underscored name {hidden[0]!r}")
        if any(too_long(value) for value in attrs.values()):
            raise jinja2.exceptions.SecurityError("a value set in a namespace is too long")
        return BoundedNamespace(attrs)

    env.globals["namespace"] = namespace
    for name in ("center", "indent"):  # filters that pad to a width the template gives
        env.filters[name] = _bounded_padding(env.filters[name], jinja2.exceptions.SecurityError)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise GptzooError(
            f"the checkpoint's chat template is not valid jinja2 (line {err.lineno}: {err.message})"
        ) from None


@hookimpl
def register_components(register):
    register("tokenizer", "hf", HFTokenizer)
