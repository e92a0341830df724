"""Presets of ablations that reproduce a paper's study (``archbench study NAME``)."""
