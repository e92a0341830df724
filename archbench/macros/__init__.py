"""Macro-architectures: how blocks are arranged into a model (one registered class each)."""
from archbench.macros import isotropic, pyramid, two_branch, two_stage  # noqa: F401
from archbench.macros.base import MacroModel  # noqa: F401
