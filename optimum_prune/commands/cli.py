"""The standalone ``optimum-prune`` script: the same commands as ``optimum-cli prune``."""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from optimum.commands.base import RootOptimumCLICommand

from optimum_prune.commands.base import SUBCOMMANDS


def build_parser() -> tuple[RootOptimumCLICommand, ArgumentParser]:
    """The ``optimum-prune`` root command with subcommands ``run``, ``onnx``, ``analyze``, ``verify``."""
    root = RootOptimumCLICommand("optimum-prune", usage="optimum-prune <command> [<args>]")
    for info in SUBCOMMANDS:
        root.register_subcommand(info)
    return root, root.parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``optimum-prune``; returns the exit status."""
    _, parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        args.func(args).run()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
