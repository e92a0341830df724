"""Errors that mean "the user's input is wrong" (one line, exit 2), as opposed to bugs."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input — a flag, a spec, a recipe, a dataset, a file — that the user can fix: the
    CLI prints its one-line message and exits 2. Every other exception is a bug (traceback,
    exit 1), including a ValueError from a library. A ValueError subclass, so callers that
    catch ValueError keep working."""
