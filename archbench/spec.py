"""Architecture specs: frozen, serialisable dataclasses that name every part of a model.

A spec is data. The search samples one, the builder turns one into a module, and every
results row stores one, so ``spec → dict/JSON/YAML → spec`` round-trips exactly.
A spec is validated when it is made (:func:`archbench.grammar.validate`): an invalid one
never exists, and the error names the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

import yaml
from archbench.errors import UsageError


class Options(tuple):
    """Immutable, hashable keyword options of a part: sorted ``(name, value)`` pairs."""

    def __new__(cls, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        pairs = items.items() if isinstance(items, Mapping) else items
        return super().__new__(cls, sorted((str(k), _freeze(v)) for k, v in pairs))

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self}

    def __repr__(self) -> str:
        return f"Options({self.as_dict()!r})"


def _freeze(v: Any) -> Any:
    if isinstance(v, Mapping):
        return Options(v)
    if isinstance(v, (list, tuple)) and not isinstance(v, Options):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    if isinstance(v, Options):
        return {k: _thaw(x) for k, x in v}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def _options(v: Any, name: str) -> Options:
    """A part's options from a mapping (or ``(name, value)`` pairs); anything else is named."""
    if v is None or isinstance(v, Options):
        return v or Options()
    if isinstance(v, Mapping) or (isinstance(v, (list, tuple))
                                  and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v)):
        return Options(v)
    raise UsageError(f"{name} must be a mapping of option names to values (e.g. {{ratio: 0.125}}), got {v!r}")


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return (int(v[0]), int(v[1]))
    raise UsageError(f"{name} must be an int or (height, width), got {v!r}")


class _Spec:
    """Shared (de)serialisation for the spec dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Spec) else (
                [s.to_dict() for s in v] if f.name == "stages" else _thaw(v))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise UsageError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(
                f"unknown {cls.__name__} field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class StemSpec(_Spec):
    """How pixels become the first feature map."""

    kind: str = "patch"  # registered stem: patch | conv | dagger | volo
    patch_size: int = 16  # total stride of the stem
    norm: bool = False  # norm after the patch projection (ShiftViT's patch_norm)
    hidden: int = 64  # width inside multi-conv stems (VOLO's stem_hidden_dim)


@dataclass(frozen=True)
class StageSpec(_Spec):
    """A run of identical blocks at one width and resolution (a branch, in two-branch)."""

    depth: int
    dim: int
    heads: int = 1
    mixer: str = "msa"
    mixer_options: Options = field(default_factory=Options)
    ffn: str = "mlp"
    ffn_options: Options = field(default_factory=Options)
    mlp_ratio: float = 4.0
    patch_size: int = 0  # two-branch only: this branch's patch size (0 elsewhere)

    def __post_init__(self):
        object.__setattr__(self, "mixer_options", _options(self.mixer_options, "mixer_options"))
        object.__setattr__(self, "ffn_options", _options(self.ffn_options, "ffn_options"))


@dataclass(frozen=True)
class ArchSpec(_Spec):
    """A whole model: macro-architecture, stages, and the block-wide choices."""

    macro: str  # registered macro-architecture: isotropic | pyramid | two-branch | two-stage
    stages: tuple[StageSpec, ...]
    img_size: tuple[int, int] = (224, 224)
    in_chans: int = 3
    num_classes: int = 1000
    stem: StemSpec = field(default_factory=StemSpec)
    norm: str = "layernorm"  # registered norm used in blocks, downsampling and the head
    norm_eps: float = 1e-6
    act: str = "gelu"  # registered activation of the FFNs
    layer_scale: float = 0.0  # init of a per-channel layer scale; 0 disables it
    layer_scale_bias: bool = False  # layer scale with a per-channel bias (TransXNet)
    block_pos: int = 0  # kernel of a per-block depthwise-conv position encoding; 0: none
    pos_embed: bool = False  # learned absolute position embedding (ViT, CrossViT, VOLO)
    class_token: bool = False
    pool: str = "avg"  # "avg" over patch tokens, or "token" (the class token)
    drop_rate: float = 0.0  # dropout in FFNs and before the head
    drop_path: float = 0.0  # stochastic depth, linear over blocks from 0 to this
    options: Options = field(default_factory=Options)  # macro-specific, see each macro
    # weight-init scheme (archbench.layers.init); None: the macro's family's. Left out of
    # to_dict() while None, so specs (and results keys) from before the field keep their form
    init: str | None = None

    def __post_init__(self):
        stages = self.stages
        if isinstance(stages, (StageSpec, Mapping)) or not isinstance(stages, Iterable):
            raise UsageError(f"stages must be a list of stages, got {stages!r}")
        stages = tuple(s if isinstance(s, StageSpec) else StageSpec.from_dict(s) for s in stages)
        stem = self.stem if isinstance(self.stem, StemSpec) else StemSpec.from_dict(self.stem)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "stem", stem)
        object.__setattr__(self, "img_size", _pair(self.img_size, "img_size"))
        object.__setattr__(self, "options", _options(self.options, "options"))
        from archbench.grammar import validate  # late: the grammar imports the part registries

        validate(self)

    # serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["init"] is None:
            del out["init"]
        return out

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "ArchSpec":
        return cls.from_dict(yaml.safe_load(text))

    @property
    def depth(self) -> int:
        return sum(s.depth for s in self.stages)
