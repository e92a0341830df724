"""Optuna search over the spec grammar: space files, studies, tables and Pareto plots."""
