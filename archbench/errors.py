"""Errors that mean "the user's input is wrong" (one line, exit 2), as opposed to bugs."""
from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the command line."""
