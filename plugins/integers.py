"""The integers tokenizer: plain ids written as text, the vocabulary of diagnostic tasks."""

from pydantic import Field

from gptzoo.core import Params, Tokenizer
from gptzoo.registry import hookimpl


class IntegersParams(Params):
    vocab_size: int = Field(256, gt=0, description="ids 0 .. vocab_size - 1; then <|endoftext|> and <|unk|>")


class IntegersTokenizer(Tokenizer):
    """Plain integer ids written as text, "3 17 5" <-> [3, 17, 5]: the vocabulary of diagnostic tasks.

    Ids are separated by whitespace; a word that is not an id below vocab_size becomes <|unk|>.
    """

    Params = IntegersParams
    lossless = False
    UNK = "<|unk|>"

    @property
    def vocab_size(self) -> int:
        return self.params.vocab_size + 2

    @property
    def eot_id(self) -> int:
        return self.params.vocab_size

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(self.EOT)):
            if i:
                ids.append(self.eot_id)
            ids.extend(
                int(w) if w.isdecimal() and int(w) < self.params.vocab_size else self.eot_id + 1 for w in part.split()
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        names = {self.eot_id: self.EOT, self.eot_id + 1: self.UNK}
        return " ".join(names.get(i, str(i)) for i in ids)


@hookimpl
def register_components(register):
    register("tokenizer", "integers", IntegersTokenizer)
