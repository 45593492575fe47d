"""Tokenizers. ``tiktoken`` and ``byte`` are here; the corpus-fitted ones live beside them."""

import os
from functools import cached_property

from pydantic import field_validator

from gptzoo.core import GptzooError, Params, Tokenizer
from gptzoo.registry import hookimpl

CACHE_ENV = "TIKTOKEN_CACHE_DIR"


class TiktokenParams(Params):
    encoding: str = "gpt2"

    @field_validator("encoding")
    @classmethod
    def _known(cls, value: str) -> str:
        import tiktoken

        names = tiktoken.list_encoding_names()
        if value not in names:
            raise ValueError(f"unknown tiktoken encoding '{value}'; available: {', '.join(names)}")
        return value


class TiktokenTokenizer(Tokenizer):
    """OpenAI's BPE encodings (gpt2, r50k_base, cl100k_base, ...) through tiktoken."""

    Params = TiktokenParams

    @cached_property
    def _encoding(self):
        import tiktoken

        try:
            return tiktoken.get_encoding(self.params.encoding)
        except Exception as err:  # noqa: BLE001 -- tiktoken raises requests/IO errors of many kinds offline
            where = os.environ.get(CACHE_ENV)
            raise GptzooError(
                f"tiktoken could not load the '{self.params.encoding}' encoding ({type(err).__name__}: {err}). "
                f"Without network access it needs its files in a cache folder: set {CACHE_ENV} to a folder holding them "
                f"(in this project: export {CACHE_ENV}=\"$(realpath ../shared/tiktoken)\")"
                + (f"; {CACHE_ENV} is now {where!r}" if where else "")
            ) from None

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self._encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special={self.EOT})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encoding.encode_batch(texts, allowed_special={self.EOT}, num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0-255, plus <|endoftext|> as 256."""

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(self.EOT)):
            if i:
                ids.append(256)
            ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            if i == 256:
                out.append(run.decode("utf-8", errors="replace") + self.EOT)
                run = bytearray()
            else:
                run.append(i)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


@hookimpl
def register_components(register):
    register("tokenizer", "tiktoken", TiktokenTokenizer)
    register("tokenizer", "byte", ByteTokenizer)
