"""The ``archbench`` parser and entry point: one module per command registers its parser."""
from __future__ import annotations

import argparse
import os
import sys
import time

import yaml

from archbench.cli import ablate, evaluate, models, profile, run, scale, search, spec, study
from archbench.cli.console import _cuda
from archbench.errors import UsageError

EXIT_USAGE = 2
COMMANDS = (spec, profile, scale, run, evaluate, search, ablate, study, models)  # the order of `archbench --help`


class Parser(argparse.ArgumentParser):
    """argparse with our convention for bad input: one line naming the command, exit 2 (its usage
    block is what ``-h`` is for). Subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="archbench", description="Vision-transformer parts (token mixers, FFNs, macros) and the "
               "published models: build, measure, train, search and ablate. `archbench COMMAND -h` for a command.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    default_device = "cuda" if _cuda() else "cpu"
    for command in COMMANDS:
        command.add_parser(sub, default_device)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, yaml.YAMLError) as e:  # bad input; anything else is a bug: a traceback, exit 1
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: rank 0 says it once
            print(f"archbench {args.command}: error: {e}", file=sys.stderr, flush=True)
        else:  # torchrun tears the job down at the first exit: let rank 0 say why before that
            time.sleep(2.0)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("archbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
