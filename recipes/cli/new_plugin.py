"""gptzoo new-plugin: start a plugin distribution that already passes the conformance kit."""

import argparse

from gptzoo.recipes.extending.scaffold import FAMILIES, new_plugin

HELP = "write a new plugin package (module, entry point, conformance test) to start from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", help="the component's name in configs, e.g. scalenorm (also names the module gptzoo_NAME)"
    )
    parser.add_argument("--family", required=True, choices=FAMILIES, help="the component family")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the folder to create (must not exist, or be empty)"
    )


def run(args: argparse.Namespace) -> int:
    for path in new_plugin(args.name, args.family, args.out):
        print(path)
    print(f"next: cd {args.out} && pip install -e '.[test]' && pytest   (then edit the forward and run the kit again)")
    return 0
