"""Name → part registries: one per kind of part (token mixer, FFN, norm, macro, model).

Every registry is filled by a decorator at import time. Looking up an unknown name raises a
``ValueError`` that lists the known names (and the closest ones), so a typo on the command
line or in a search-space file is one readable line, never a ``KeyError`` deep in a build.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar
from archbench.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of parts of one kind, e.g. ``MIXERS``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@MIXERS.register("shift")``. A duplicate name is an error."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UsageError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        msg = f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
        close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.6)
        if close:
            msg += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
        return msg

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


MIXERS: Registry = Registry("token mixer")
FFNS: Registry = Registry("FFN")
NORMS: Registry = Registry("norm")
ACTS: Registry = Registry("activation")
STEMS: Registry = Registry("stem")
MACROS: Registry = Registry("macro-architecture")
MODELS: Registry = Registry("model")
