"""Factors of an ablation: ``--vary NAME=V1,V2,...`` parsed and applied to a base model.

A factor's name is a search-space parameter name (``mixer``, ``ffn``, ``depths``,
``depths[2]``, ``mlp_ratio``, ``mixer_options.ratio``, ``norm``, ``act``, ``patch_size``,
...; see ``search_spaces/README.md``) or one of the aliases below. Values are YAML scalars
or lists, and fractions such as ``1/12``; commas inside brackets belong to one value
(``depths=[2,2,4,2],[2,2,8,2]``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from archbench.search.space import PARAM_RE, put_param
from archbench.spec import ArchSpec
from archbench.errors import UsageError

ALIASES = {"shift_ratio": "mixer_options.ratio", "gamma": "mixer_options.ratio"}
ALLOWED = ("mixer, ffn, depths, dims, heads, mlp_ratio (each also NAME[i] for one stage), "
           "mixer_options.NAME, ffn_options.NAME, patch_size, norm, act, drop_path, drop_rate, layer_scale, "
           "shift_ratio (= mixer_options.ratio)")


@dataclass(frozen=True)
class Factor:
    """One varied quantity: its canonical name and the values, as typed and as parsed."""

    name: str
    labels: tuple[str, ...]
    values: tuple[Any, ...]
    display: str = ""  # the name as typed (an alias such as shift_ratio), for arm labels

    @property
    def label(self) -> str:
        return self.display or self.name


def parse_value(text: str) -> Any:
    import yaml

    t = text.strip()
    if re.fullmatch(r"\d+\s*/\s*\d+", t):
        num, den = (int(s) for s in t.split("/"))
        if den == 0:
            raise UsageError(f"bad fraction {t!r}")
        return num / den
    try:
        return yaml.safe_load(t)
    except yaml.YAMLError:
        return t


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out]


def canonical(name: str) -> str:
    name = ALIASES.get(name.strip(), name.strip()).replace("-", "_")
    if not PARAM_RE.match(name):
        raise UsageError(f"unknown factor {name!r}; allowed: {ALLOWED}")
    return name


def parse_vary(text: str) -> Factor:
    """``NAME=V1,V2,...`` → :class:`Factor` (ValueError with the reason on bad input)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise UsageError(f"--vary takes NAME=V1,V2,..., got {text!r}")
    cname = canonical(name)
    labels = [s for s in split_values(rest) if s]
    if not labels:
        raise UsageError(f"--vary {name.strip()}: no values given (e.g. {name.strip()}=a,b)")
    if len(set(labels)) != len(labels):
        raise UsageError(f"--vary {name.strip()}: a value is repeated in {rest!r}")
    values = tuple(parse_value(s) for s in labels)
    return Factor(cname, tuple(labels), values, name.strip())


def apply_changes(base: dict[str, Any] | ArchSpec, changes: dict[str, Any]) -> ArchSpec:
    """The base (shorthand dict, or a spec from the zoo/a file) with factor values put in."""
    if isinstance(base, ArchSpec):
        from archbench.models import override_spec

        kw: dict[str, Any] = {}
        for name, value in changes.items():
            put_param(kw, name, value, base)
        return override_spec(base, **kw) if kw else base
    from archbench.builder import make_spec

    base_spec = make_spec(**base)
    kw = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in base.items()}
    for name, value in changes.items():
        put_param(kw, name, value, base_spec)
    return make_spec(**kw)
