"""Spec validation: the one place a spec is checked, when it is made.

Every check raises ``ValueError`` with a message that names the bad value, where it is
(``stage 2 mixer option 'ratio'``) and what is allowed, so the CLI can print one line.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import TYPE_CHECKING, Any

from archbench.layers.init import INITS
from archbench.registry import ACTS, FFNS, MACROS, MIXERS, NORMS, STEMS
from archbench.errors import UsageError

if TYPE_CHECKING:
    from archbench.spec import ArchSpec

# constructor arguments the block supplies itself; never spec options
MIXER_ARGS = ("dim", "heads", "grid", "layout")
FFN_ARGS = ("dim", "hidden", "act", "drop", "layout")


def load_parts() -> None:
    """Import every module that registers parts (idempotent)."""
    import archbench.layers.ffns  # noqa: F401
    import archbench.layers.mixers  # noqa: F401
    import archbench.layers.norms  # noqa: F401
    import archbench.layers.stems  # noqa: F401
    import archbench.macros  # noqa: F401


def home_macro(mixer: str) -> str:
    """The macro-architecture a mixer comes from (its class attribute ``home_macro``): where the
    shorthand puts it when no macro is given."""
    return getattr(MIXERS.get(mixer), "home_macro", "isotropic")


def stage_defaults(part: type, index: int, n_stages: int, macro: str) -> dict[str, Any]:
    """Options a part sets per stage (its optional ``stage_options(index, n_stages, macro)``),
    e.g. D-Mixer's spatial reduction shrinking along a pyramid; given options win over these."""
    fn = getattr(part, "stage_options", None)
    return dict(fn(index, n_stages, macro)) if fn else {}


def option_defaults(cls: type, reserved: tuple[str, ...]) -> dict[str, Any]:
    """A part's options: its keyword arguments with defaults, minus the block-supplied ones."""
    return dict(_option_defaults(cls, reserved))


@functools.lru_cache(maxsize=None)  # read on every spec, twice a stage: the signature never changes
def _option_defaults(cls: type, reserved: tuple[str, ...]) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items()
            if n != "self" and n not in reserved and p.default is not inspect.Parameter.empty}


def check_options(where: str, cls_name: str, given: dict[str, Any], defaults: dict[str, Any]) -> None:
    for name, value in given.items():
        if name not in defaults:
            allowed = ", ".join(sorted(defaults)) or "none"
            raise UsageError(f"{where}: {cls_name} has no option {name!r}; allowed: {allowed}")
        check_type(f"{where} option {name!r}", value, defaults[name])


def check_type(where: str, value: Any, default: Any) -> None:
    """Options take the type of their default (an int is fine where a float is expected)."""
    if default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, tuple)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UsageError(f"{where} must be {type(default).__name__} like {default!r}, got {value!r}")


def _positive(where: str, value: Any, *, integer: bool = True, zero: bool = False) -> None:
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not zero):
        need = ("a non-negative" if zero else "a positive") + (" integer" if integer else " number")
        raise UsageError(f"{where} must be {need}, got {value!r}")


def _rate(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UsageError(f"{where} must be in [0, 1), got {value!r}")


# what a scalar field's annotation allows, and how a message says it
_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
}  # names (str fields) are checked by their registries, which list the known ones


def check_field_types(obj: Any, where: str = "") -> None:
    """Every bool and number field of a spec dataclass holds its type: ``class_token=1.5`` or
    ``pos_embed='maybe'`` is refused naming the field, the value and what is allowed (an int is
    fine where a float is expected; a bool is never taken for a number)."""
    import dataclasses

    for f in dataclasses.fields(obj):
        kind = _KINDS.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        value = getattr(obj, f.name)
        if kind is not None and not kind[0](value):
            raise UsageError(f"{where}{f.name} must be {kind[1]}, got {value!r}")


def validate(spec: "ArchSpec") -> None:
    load_parts()
    from archbench.layers.norms import check_norm

    check_field_types(spec)
    check_field_types(spec.stem, "stem.")
    for i, st in enumerate(spec.stages):
        check_field_types(st, f"stage {i} ")
    macro = MACROS.get(spec.macro)
    if not spec.stages:
        raise UsageError("a spec needs at least one stage")
    for name in ("in_chans", "num_classes"):
        _positive(name, getattr(spec, name), zero=name == "num_classes")
    for i, hw in enumerate(spec.img_size):
        _positive("img_size", hw)
    _positive("norm_eps", spec.norm_eps, integer=False)
    _positive("layer_scale", spec.layer_scale, integer=False, zero=True)
    _positive("block_pos", spec.block_pos, zero=True)
    if spec.block_pos and spec.block_pos % 2 == 0:
        raise UsageError(f"block_pos (a depthwise conv kernel) must be odd, got {spec.block_pos}")
    _rate("drop_rate", spec.drop_rate)
    _rate("drop_path", spec.drop_path)
    if spec.pool not in ("avg", "token"):
        raise UsageError(f"pool must be 'avg' or 'token', got {spec.pool!r}")
    if spec.pool == "token" and not spec.class_token:
        raise UsageError("pool='token' needs class_token=True; use pool='avg' without a class token")
    if spec.init is not None:
        INITS.get(spec.init)
    NORMS.get(spec.norm)
    check_norm(spec.norm, macro.layout)
    ACTS.get(spec.act)
    stem = STEMS.get(spec.stem.kind)
    _positive("stem.patch_size", spec.stem.patch_size)
    _positive("stem.hidden", spec.stem.hidden)
    if hasattr(stem, "check"):
        stem.check(spec.stem)
    check_options("macro", spec.macro, spec.options.as_dict(), macro.option_defaults)

    for i, st in enumerate(spec.stages):
        where = f"stage {i}"
        for name in ("depth", "dim", "heads"):
            _positive(f"{where} {name}", getattr(st, name))
        _positive(f"{where} mlp_ratio", st.mlp_ratio, integer=False)
        _positive(f"{where} patch_size", st.patch_size, zero=True)
        if st.dim % st.heads:
            raise UsageError(f"{where}: heads={st.heads} does not divide dim={st.dim}; "
                             f"use a divisor of {st.dim}")
        hidden = int(st.dim * st.mlp_ratio)
        if hidden < 1:
            raise UsageError(f"{where}: mlp_ratio={st.mlp_ratio} gives an FFN of width 0")
        mixer = MIXERS.get(st.mixer)
        mopts = st.mixer_options.as_dict()
        check_options(f"{where} mixer", st.mixer, mopts, option_defaults(mixer, MIXER_ARGS))
        ffn = FFNS.get(st.ffn)
        fopts = st.ffn_options.as_dict()
        check_options(f"{where} ffn", st.ffn, fopts, option_defaults(ffn, FFN_ARGS))

    grids = macro.grids(spec)  # raises for sizes the macro cannot tile
    for i, (st, grid) in enumerate(zip(spec.stages, grids)):
        mixer, ffn = MIXERS.get(st.mixer), FFNS.get(st.ffn)
        try:
            # a part's check gets every option, defaults from its constructor filled in: the
            # defaults are written once, in the signature, and cannot drift from the check's
            if hasattr(mixer, "check"):
                mixer.check(st.dim, st.heads, grid, **{**option_defaults(mixer, MIXER_ARGS),
                                                       **st.mixer_options.as_dict()})
            if hasattr(ffn, "check"):
                ffn.check(st.dim, int(st.dim * st.mlp_ratio), **{**option_defaults(ffn, FFN_ARGS),
                                                                 **st.ffn_options.as_dict()})
        except ValueError as e:
            raise UsageError(f"stage {i} ({st.mixer} + {st.ffn}, dim {st.dim}, grid "
                             f"{grid[0]}x{grid[1]}): {e}") from None
    macro.check(spec)
