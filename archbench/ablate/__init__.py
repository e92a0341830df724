"""Paired, budget-matched ablations: arms (factors applied to a base model), budget
matching by depth or width, seeded training of every arm × seed, paired statistics,
tables and plots. ``archbench ablate`` and ``archbench study`` are built on this."""
from archbench.ablate.factors import Factor, parse_vary
from archbench.ablate.plan import Arm, Ablation, make_arms
from archbench.ablate.stats import paired_diff

__all__ = ["Factor", "parse_vary", "Arm", "Ablation", "make_arms", "paired_diff"]
