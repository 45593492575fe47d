"""gptzoo presets: every shipped config by name, with the parameter counts describe gives."""

import json

from gptzoo.recipes.cli import main


def listed(capsys, *argv):
    capsys.readouterr()
    assert main(["presets", *argv, "--json"]) == 0
    return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


def test_gpt2_sizes_are_the_published_ones(capsys):
    rows = listed(capsys, "gpt2-")
    assert {name: row["parameters"] for name, row in rows.items()} == {
        "gpt2-124m": 124_439_808,
        "gpt2-355m": 354_823_168,
        "gpt2-774m": 774_030_080,
        "gpt2-1558m": 1_557_611_200,
    }


def test_moe_presets_say_their_active_parameters_too(capsys):
    rows = listed(capsys, "qwen3")
    assert rows["hf/qwen3"]["parameters"] == rows["hf/qwen3"]["active_parameters_per_token"] == 596_049_920
    assert rows["hf/qwen3_moe"]["parameters"] == 30_532_122_624
    assert rows["hf/qwen3_moe"]["active_parameters_per_token"] == 3_353_032_704


def test_sweeps_and_learned_vocabularies_have_no_count(capsys):
    rows = listed(capsys, "a")  # ablations/..., and tiny's bpe learns its vocabulary
    assert rows["ablations/attention"] == {
        "name": "ablations/attention",
        "kind": "sweep",
        "parameters": None,
        "active_parameters_per_token": None,
    }
    assert listed(capsys, "tiny")["tiny"]["parameters"] is None


def test_the_table_lists_names_and_counts(capsys):
    capsys.readouterr()
    assert main(["presets", "mixtral"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["hf/mixtral", "46,702,792,704", "12,879,925,248"]


def test_describe_takes_a_preset_by_name(capsys):
    capsys.readouterr()
    assert main(["describe", "qwen3", "--json"]) == 0  # hf/qwen3, the only preset of that name
    assert json.loads(capsys.readouterr().out)["parameters"]["total"] == 596_049_920
