"""The ``archbench`` command line.

Model-taking commands share the spec flags (``--macro --mixer --ffn --depths --dims --heads
--mlp-ratio --patch-size --img-size --in-chans --num-classes``), plus ``--spec FILE`` and
``--set KEY=VALUE`` for any other spec field. Bad input is one line on stderr and exit 2.
"""
from archbench.cli.main import build_parser, main
from archbench.errors import UsageError

__all__ = ["build_parser", "main", "UsageError"]
