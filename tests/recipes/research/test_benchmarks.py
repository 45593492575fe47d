"""gptzoo evaluate: lm-evaluation-harness tasks on a run, with task YAML files and data built here.

The harness's adapter is checked against numbers gptzoo gives on its own: a continuation's
log-likelihood against the model's summed token log-probabilities, a text's rolling
log-likelihood against `gptzoo eval`'s loss on the same text, greedy generation against
`gptzoo generate`.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from gptzoo.recipes.cli import main
from gptzoo.recipes.runs.folder import load_run, save_run

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402 -- after the skip

from gptzoo.recipes.research.benchmarks import RESULTS, harness_model  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "runs-v0.1" / "gpt2-pre"  # char tokenizer, context 16
QUESTIONS = [
    {"question": "the cat", "choices": [" sat", " ran", " zzz"], "answer": 0},
    {"question": "a dog", "choices": [" barks", " qq"], "answer": 1},
]
# 16 characters (one window of the context), then 48 (three)
TEXTS = [{"text": "the cat sat on a"}, {"text": "a dog and a cat went to the river and sat down!!"}]
PROMPTS = [{"prompt": "the cat", "target": "t"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The v0.1 fixture saved again by this gptzoo (a manifest, so evaluate can commit its results)."""
    old = load_run(FIXTURE)
    folder = tmp_path_factory.mktemp("evaluate") / "run"
    save_run(folder, old.config, old.model, old.tokenizer)
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """A folder of three task YAML files (multiple choice, perplexity, generation) over local JSON Lines."""
    folder = tmp_path_factory.mktemp("tasks")

    def task(name, rows, body):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{body}",
            encoding="utf-8",
        )

    task(
        "tiny_choice",
        QUESTIONS,
        'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n',
    )
    task(
        "tiny_perplexity",
        TEXTS,
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
    )
    task(
        "tiny_generation",
        PROMPTS,
        'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["C"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n",
    )
    return folder


def test_the_model_is_registered_with_the_harness(run):
    from lm_eval.api.registry import get_model

    from gptzoo.recipes.research.harness_lm import GptzooLM

    assert get_model("gptzoo") is GptzooLM
    model = GptzooLM.create_from_arg_string(f"run={run},batch_size=4")  # lm_eval --model gptzoo --model_args ...
    assert model.batch_size == 4 and model.context == 16


def request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def summed_logprob(model, context_ids, continuation_ids):
    """log P(continuation | context) from one forward pass over the whole sequence."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids[:, :-1]).float(), dim=-1)[0]
    n = len(continuation_ids)
    return sum(logprobs[len(context_ids) - 1 + k, token].item() for k, token in enumerate(continuation_ids[-n:]))


def test_choice_log_likelihoods_are_the_models_summed_token_log_probabilities(run):
    trained = load_run(run)
    harness = harness_model(trained, batch_size=2)  # 5 requests: batches of 2, 2 and 1
    pairs = [(q["question"], choice) for q in QUESTIONS for choice in q["choices"]]
    scores = harness.loglikelihood([request("loglikelihood", *pair) for pair in pairs])
    encode = trained.tokenizer.encode
    for (context, continuation), (score, greedy) in zip(pairs, scores, strict=True):
        assert score == pytest.approx(summed_logprob(trained.model, encode(context), encode(continuation)), abs=1e-4)
        assert isinstance(greedy, bool)


@pytest.mark.parametrize("text", [text["text"] for text in TEXTS])
def test_rolling_log_likelihood_is_gptzoo_evals_loss_on_the_same_text(run, text, tmp_path, capsys):
    trained = load_run(run)
    ids = trained.tokenizer.encode(text)
    T = trained.config.model.context_length
    assert len(ids) % T == 0  # gptzoo eval leaves out a tail shorter than a window
    # the harness scores the first token after end-of-text: the corpus [<|endoftext|>, text], as an
    # empty record before the text gives; gptzoo eval's windows of T are then the harness's disjoint ones
    corpus = tmp_path / "text.jsonl"
    corpus.write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": text}) + "\n", encoding="utf-8")
    assert main(["eval", str(run), "--data", str(corpus), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{len(ids):,} tokens scored" in out
    loss = float(re.search(r"loss (\d+\.\d+)", out).group(1))
    harness = harness_model(trained, batch_size=2)
    (rolling,) = harness.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert rolling == pytest.approx(-loss * len(ids), abs=6e-5 * len(ids))  # the loss is printed to 4 places


def test_greedy_generation_is_gptzoo_generates(run, capsys):
    trained = load_run(run)
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "8", "--no-stream"]) == 0
    generated = capsys.readouterr().out.rstrip("\n").removeprefix("the cat")
    harness = harness_model(trained, batch_size=1)
    (free,) = harness.generate_until([request("generate_until", "the cat", {"until": [], "max_gen_toks": 8})])
    assert free == generated
    stop = generated[3]
    (cut,) = harness.generate_until([request("generate_until", "the cat", {"until": [stop], "max_gen_toks": 8})])
    assert cut == generated.split(stop, 1)[0]
    # prompts of other lengths batched together (left-padded) get what each gets alone
    prompts = ["a", "the cat", "the dog and the"]
    alone = [
        harness.generate_until([request("generate_until", p, {"until": [], "max_gen_toks": 8})])[0] for p in prompts
    ]
    together = harness_model(trained, batch_size=3).generate_until(
        [request("generate_until", p, {"until": [], "max_gen_toks": 8}) for p in prompts]
    )
    assert together == alone


@pytest.mark.slow
def test_evaluate_writes_the_harness_results_into_the_run(run, tasks, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    argv = ["evaluate", str(run), "--tasks", "tiny_choice,tiny_perplexity,tiny_generation"]
    assert main([*argv, "--include-path", str(tasks), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tiny_choice" in out and "word_perplexity" in out and f"wrote {run}/{RESULTS}" in out
    results = json.loads((run / RESULTS).read_text())["results"]
    assert set(results) == {"tiny_choice", "tiny_perplexity", "tiny_generation"}
    assert 0.0 <= results["tiny_choice"]["acc,none"] <= 1.0
    assert results["tiny_perplexity"]["word_perplexity,none"] > 1.0
