"""One module per ``gptzoo`` subcommand, in the order a user meets them (see ``cli.COMMANDS``):
each has ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and leaves the work to
the recipes one level up."""
