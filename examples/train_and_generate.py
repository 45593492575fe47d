"""Train a tiny GPT through the Python API, then load the run folder back and generate from it.

    python examples/train_and_generate.py --out runs/example
    python examples/train_and_generate.py --config configs/tiny.toml --out runs/example --set train.max_steps=50

The config is a preset name or a TOML file; ``--set`` overrides any field, as on the command line.
"""

import argparse

from gptzoo.recipes.config import load_run_config
from gptzoo.recipes.generation.generate import complete
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="a preset name or a TOML file (default: tiny)")
    parser.add_argument("--out", required=True, help="the run folder to create")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--prompt", default="The")
    parser.add_argument("--tokens", type=int, default=60, help="how many tokens to generate")
    args = parser.parse_args()

    config = load_run_config(args.config, args.set)
    summary = train(config, args.out, progress=False)
    print(f"trained {summary.steps} steps ({summary.tokens:,} tokens): validation loss {summary.final_val_loss:.3f}")

    run = load_run(args.out)  # what any later session does with the folder
    text = complete(run.model, run.tokenizer, args.prompt, args.tokens, temperature=0.8, top_k=40, seed=0)
    print(args.prompt + text)


if __name__ == "__main__":
    main()
