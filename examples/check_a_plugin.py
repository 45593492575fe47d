"""Run the conformance kit on a plugin: the sliding-window attention in examples/plugins/window_attention.py.

    python examples/check_a_plugin.py --window 4

check_component builds tiny GPTs with the variant in place and checks them the way gptzoo
checks its built-ins: shapes, gradients, state round trip, causality, the decoding cache,
padded batches, and that no query sees past the declared window. It raises AssertionError
saying what broke.
"""

import argparse
import sys
from pathlib import Path

from gptzoo.registry import make_registry
from gptzoo.testing import check_component

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))
import window_attention  # noqa: E402 -- found through the path above, as an installed plugin would be


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=4, help="the window the attention keeps")
    args = parser.parse_args()

    registry = make_registry(entry_points=False)  # the built-ins, then this plugin registered in code
    registry.register_plugin(window_attention, name="window_attention")
    check_component("attention", "window", registry=registry, window=args.window)
    print(f"attention 'window' (window = {args.window}) passes the conformance kit")


if __name__ == "__main__":
    main()
