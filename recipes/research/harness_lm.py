"""The harness's model "gptzoo": lm-evaluation-harness requests answered by a gptzoo run.

Imported only where lm-evaluation-harness is installed (the eval extra); importing it registers
the model with the harness. Three kinds of request, each from gptzoo's own forward pass:
- ``loglikelihood``: the summed log-probability of a continuation after a context, and whether
  greedy decoding would have produced it (multiple-choice tasks);
- ``loglikelihood_rolling``: a whole text's log-probability, scored in disjoint windows of the
  context, the first token predicted from end-of-text (perplexity tasks);
- ``generate_until``: greedy continuation with the KV cache (``generate_ids``), cut at the first stop string.
Log-likelihoods are scored in batches, longest first, so one batch holds sequences of similar length;
generations are batched among the requests that ask for as many new tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptzoo.recipes.generation.generate import generate_ids
from gptzoo.recipes.generation.text import decode_after
from gptzoo.recipes.runs.folder import Run, load_run


@register_model("gptzoo")
class GptzooLM(TemplateLM):
    """A gptzoo run as the harness's model: ``lm_eval --model gptzoo --model_args run=DIR`` works too."""

    def __init__(self, run: Run | str, batch_size: int | str = 8, device: str = "cpu") -> None:
        super().__init__()
        self.run = run if isinstance(run, Run) else load_run(run, device=device)
        self.model = self.run.model
        self.model_device = next(self.model.parameters()).device
        self.context = self.run.config.model.context_length
        self.batch_size = int(batch_size)

    @property
    def eot_token_id(self) -> int:
        return self.run.tokenizer.eot_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.run.tokenizer.encode(string)

    def tok_decode(self, ids: list[int]) -> str:
        return self.run.tokenizer.decode(ids)

    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(summed log-prob of ``continuation``, whether it is greedy) for each (context, continuation) of ids."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        scores: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            # the last context_length + 1 tokens: inputs all but the last, the continuation scored at the end
            windows = [(pairs[i][0] + pairs[i][1])[-(self.context + 1) :] for i in rows]
            width = max(len(w) - 1 for w in windows)
            inputs = torch.full((len(rows), width), self.eot_token_id, dtype=torch.long)
            for r, window in enumerate(windows):  # right-padded: a causal model's earlier positions ignore it
                inputs[r, : len(window) - 1] = torch.tensor(window[:-1])
            logprobs = F.log_softmax(self.model(inputs.to(self.model_device)).float(), dim=-1).cpu()
            for r, (i, window) in enumerate(zip(rows, windows, strict=True)):
                n = len(pairs[i][1])
                target = torch.tensor(window[-n:])
                positions = logprobs[r, len(window) - 1 - n : len(window) - 1]  # (n, V)
                total = positions.gather(-1, target[:, None]).sum().item()
                scores[i] = (total, bool((positions.argmax(-1) == target).all()))
        return scores

    def _loglikelihood_tokens(self, requests: list, **kwargs: Any) -> list[tuple[float, bool]]:
        return self._score([(context, continuation) for _, context, continuation in requests])

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for (text,) in (request.args for request in requests):
            windows = [
                make_disjoint_window(window)
                for window in get_rolling_token_windows(
                    self.tok_encode(text), self.eot_token_id, self.context, context_len=1
                )
            ]
            totals.append(sum(score for score, _ in self._score(windows)))
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, up to ``batch_size`` prompts at once among those asking for as many tokens."""
        prompts, limits, stops = [], [], []
        for context, options in (request.args for request in requests):
            until = options.get("until") or []
            max_new = int(options.get("max_gen_toks", 256))
            ids = self.tok_encode(context) or [self.eot_token_id]
            prompts.append(ids[-max(1, self.context - max_new) :])  # room for the new tokens within the context
            limits.append(max_new)
            stops.append([until] if isinstance(until, str) else list(until))
        outputs = [""] * len(prompts)
        for max_new in sorted(set(limits)):
            rows = [i for i, limit in enumerate(limits) if limit == max_new]
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start : start + self.batch_size]
                new = generate_ids(self.model, [prompts[i] for i in batch], max_new, eot_id=self.eot_token_id)
                for i, ids in zip(batch, new, strict=True):
                    text = decode_after(self.run.tokenizer, prompts[i], ids)
                    for stop in stops[i]:
                        text = text.split(stop, 1)[0]
                    outputs[i] = text
        return outputs
