"""gptzoo import-book: the book's saved GPTModel (model.pth, a state dict) -> a gptzoo run folder."""

import argparse

from gptzoo.core import GptzooError
from gptzoo.recipes.interop.book import BOOK_DROPOUT, GPT2_HEADS, import_book
from gptzoo.recipes.interop.gpt2 import ATTENTION

HELP = "convert the book's saved GPTModel (torch.save(model.state_dict(), 'model.pth')) into a run folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        metavar="MODEL_PTH",
        help="the book's model.pth (or model_and_optimizer.pth), read with torch.load(weights_only=True)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the run folder to create (must not exist, or be empty)"
    )
    heads = ", ".join(f"{heads} for {dim}" for dim, heads in GPT2_HEADS.items())
    parser.add_argument(
        "--n-heads",
        type=int,
        default=None,
        metavar="N",
        help=f"attention heads (the state dict does not record them; default GPT-2's for its emb_dim: {heads})",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=BOOK_DROPOUT,
        help=f"the model's dropout for further training (default {BOOK_DROPOUT}, the book's drop_rate)",
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION,
        default="sdpa",
        help="attention variant of the imported model (default sdpa; all load the same weights)",
    )


def run(args: argparse.Namespace) -> int:
    if args.n_heads is not None and args.n_heads < 1:
        raise GptzooError(f"--n-heads {args.n_heads}: give at least 1")
    if not 0 <= args.dropout < 1:  # also nan
        raise GptzooError(f"--dropout {args.dropout}: give a probability in [0, 1), e.g. {BOOK_DROPOUT}")
    config = import_book(args.src, args.out, n_heads=args.n_heads, dropout=args.dropout, attention=args.attention)
    m = config.model
    print(
        f"{args.out}: the book's GPTModel with {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, context {m.context_length}, attention {m.attention.name}"
    )
    return 0
