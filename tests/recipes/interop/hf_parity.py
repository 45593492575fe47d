"""What every Hugging Face family's parity test does alike (tests/recipes/interop/test_hf*.py).

transformers' own model is built tiny with every tensor randomised (so each tensor's mapping shows)
and saved; gptzoo imports it and must give transformers' logits on a left-padded batch and its
greedy tokens, export a checkpoint transformers loads to the same logits, and export back exactly
the tensors it imported. Each family's file keeps its own configs and what only it checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
import transformers  # the test modules importing this one skip without it first
from safetensors.torch import load_file

from gptzoo.recipes.cli import main
from gptzoo.recipes.generation.generate import generate_ids
from gptzoo.recipes.interop.hf.export import export_hf
from gptzoo.recipes.interop.hf.import_ import import_hf
from gptzoo.recipes.runs.folder import load_run

DECAYS = ("A_log", "dt_bias")  # a state-space layer's decays and steps, drawn from a usable range


def randomised(
    model, *, norms_at: float = 1.0, scale: float = 0.3, buffers: tuple[str, ...] = (), buffer_scale: float = 0.3
):
    """``model`` in eval mode with every parameter redrawn (norm weights around ``norms_at``: 1 for norms
    that multiply by their weight, 0 for those that multiply by 1 + weight; decays A in [-e, -1/e]; the rest
    with deviation ``scale``), and the buffers whose names end in one of ``buffers`` (an experts' choosing bias,
    saved with the weights)."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith(buffers):
                b.copy_(buffer_scale * torch.randn_like(b))
        for name, p in model.named_parameters():
            if name.endswith(DECAYS):
                p.copy_(torch.rand_like(p) * 2 - 1)
            elif "norm" in name or ".ln_" in name:
                p.copy_(norms_at + 0.1 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p))
    return model.eval()


def built(config, **randomise) -> torch.nn.Module:
    """transformers' causal LM for ``config``, seeded and ``randomised``."""
    torch.manual_seed(0)
    return randomised(transformers.AutoModelForCausalLM.from_config(config), **randomise)


def saved(model, tmp_path_factory, name: str) -> Path:
    folder = tmp_path_factory.mktemp("hf") / name
    model.save_pretrained(folder)
    return folder


def checkpoints(build: Callable[[str], torch.nn.Module], cases) -> Callable:
    """The module-scoped fixture ``checkpoint``, one per name in ``cases``: (the name, ``build(name)``: transformers'
    model, the folder it is saved in). A test module assigns it: ``checkpoint = checkpoints(build, CASES)``."""

    @pytest.fixture(scope="module", params=list(cases))
    def checkpoint(request, tmp_path_factory):
        model = build(request.param)
        return request.param, model, saved(model, tmp_path_factory, request.param)

    return checkpoint


def left_padded_batch(vocab: int, length: int = 24, pads: tuple[int, int] = (5, 11), low: int = 1):
    """Three rows of ``length`` ids in [low, vocab), the second and third left-padded by ``pads``: (ids, mask)."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(low, vocab, (3, length), generator=g)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, : pads[0]], mask[2, : pads[1]] = False, False
    return idx, mask


def hf_logits(model, idx, mask, **options):
    """transformers' logits on a left-padded batch (``options``: e.g. ``use_cache=False``, ``position_ids``)."""
    with torch.no_grad():
        return model(input_ids=idx, attention_mask=mask.long(), **options).logits


def hf_greedy(model, prompts: list[list[int]], n: int, *, use_cache: bool = True) -> list[list[int]]:
    """transformers' ``n`` greedy tokens after each prompt, decoded as one left-padded batch."""
    width = max(len(p) for p in prompts)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([[0] * (width - len(p)) + p for p in prompts]),
            attention_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts]),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            use_cache=use_cache,
        )
    return out[:, width:].tolist()


def hf_logits_counting_real_tokens(model, idx, mask):
    """transformers' logits on a left-padded batch with each row's positions counting its real tokens only (as
    gptzoo's do), for the models whose own positions would count the pads too."""
    return hf_logits(model, idx, mask, position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0))


def check_parity(
    case: str,
    folder: Path,
    tmp_path: Path,
    batch: tuple[torch.Tensor, torch.Tensor],
    expected: torch.Tensor,
    prompts: list[list[int]],
    greedy: list[list[int]],
    logits_of: Callable = hf_logits,
    attentions: Sequence[str | None] = (None,),
    assembles: str | None = None,
) -> None:
    """Imported under each of ``attentions`` (the attention variants a family's assembly can use, which the run then
    assembles; None: import's own choice, ``assembles`` where given), gptzoo's logits at the real tokens of ``batch``
    are ``expected`` (transformers') within 1e-4 and its greedy tokens after ``prompts`` (a left-padded batch) are
    ``greedy``; the first run exported, transformers loads a model whose ``logits_of`` (model, ids, mask) are
    ``expected`` again."""
    idx, mask = batch
    for attention in attentions:
        where = f"{case}, {attention}" if attention else case
        import_hf(folder, tmp_path / (attention or "run"), attention=attention)
        run = load_run(tmp_path / (attention or "run"))
        if attention or assembles:
            assert run.config.model.attention.name == (assembles or attention), where
        with torch.no_grad():
            ours = run.model(idx, pad_mask=mask)
        torch.testing.assert_close(ours[mask], expected[mask], atol=1e-4, rtol=0, msg=lambda m, w=where: f"{w}: {m}")
        assert generate_ids(run.model, prompts, len(greedy[0])) == greedy, where
    exported = tmp_path / "exported"
    assert main(["export-hf", str(tmp_path / (attentions[0] or "run")), "--out", str(exported)]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported, attn_implementation="eager").eval()
    torch.testing.assert_close(logits_of(reloaded, idx, mask)[mask], expected[mask], atol=1e-4, rtol=0)


def check_parity_of(
    model,
    case: str,
    folder: Path,
    tmp_path: Path,
    logits_of: Callable = hf_logits,
    attentions: Sequence[str | None] = (None,),
    assembles: str | None = None,
    low: int = 1,
    prompt_lengths: tuple[int, int] = (7, 3),
    greedy_of: Callable = hf_greedy,
) -> None:
    """``check_parity`` against ``model``'s own numbers: its ``logits_of`` a ``left_padded_batch`` of ids in [low,
    vocab) and its 20 greedy tokens (``greedy_of``: model, prompts, n) after the first ``prompt_lengths`` ids of
    the batch's first row and second."""
    batch = left_padded_batch(model.config.vocab_size, low=low)
    prompts = [batch[0][0, : prompt_lengths[0]].tolist(), batch[0][1, : prompt_lengths[1]].tolist()]
    expected, greedy = logits_of(model, *batch), greedy_of(model, prompts, 20)
    check_parity(case, folder, tmp_path, batch, expected, prompts, greedy, logits_of, attentions, assembles)


def check_past_context(
    model, folder: Path, tmp_path: Path, prompt: list[int], context: int, greedy: Callable, n: int | None = None
):
    """Imported into ``tmp_path / "run"``, a run of ``context`` tokens that may decode past them: its ``n`` greedy
    tokens (``context`` + 30 unless given) after ``prompt``, through its cache, are transformers' ``greedy`` (model,
    prompts, n). Returns the run."""
    n = n or context + 30
    import_hf(folder, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.config.model.context_length == context and run.model.extension_refusal() is None
    assert generate_ids(run.model, [prompt], n) == greedy(model, [prompt], n)
    return run


def idle_expert_parameters(model) -> int:
    """Per mixture layer of transformers' ``model``, the parameters (biases included) of the experts a token does
    not choose."""
    idle = 0
    for name, module in model.named_modules():
        if name.endswith(".experts"):
            per_expert = sum(p[0].numel() for p in module.parameters())
            idle += (module.num_experts - model.config.num_experts_per_tok) * per_expert
    return idle


def described(folder: Path, tmp_path: Path, capsys, model=None) -> dict:
    """``describe --json`` of the checkpoint in ``folder`` imported into ``tmp_path / "run"``; given transformers'
    ``model``, its total parameters are transformers' count (buffers aside), its active ones that less the
    ``idle_expert_parameters``."""
    import_hf(folder, tmp_path / "run")
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    if model is not None:
        assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
        assert info["active_parameters_per_token"] == info["parameters"]["total"] - idle_expert_parameters(model)
    return info


def check_same_tensors(model, folder: Path, tmp_path: Path, left_out: set[str] = frozenset()) -> dict:
    """Imported then exported, the checkpoint's tensors come back bit for bit (less a tied head and
    ``left_out``, which gptzoo keeps as settings); returns the exported config.json."""
    import_hf(folder, tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "out")
    original = load_file(str(folder / "model.safetensors"))
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    tied = {"lm_head.weight"} if model.lm_head.weight is model.get_input_embeddings().weight else set()
    assert sorted(exported) == sorted(set(original) - tied - set(left_out))
    for name in exported:
        assert torch.equal(exported[name], original[name]), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == model.config.model_type
    return config


def check_refused(model, tmp_path: Path, change: dict, named: str, capsys) -> None:
    """A checkpoint of ``model`` whose config.json has ``change`` is refused (exit 2, a message with ``named``
    and the file, no traceback) before anything is written."""
    model.save_pretrained(tmp_path / "src")
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps(config | change))
    assert main(["import-hf", str(tmp_path / "src"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert named in err and "config.json" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no run folder begun
