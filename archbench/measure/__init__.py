"""Measurement: parameters and FLOPs (speed and memory come next)."""
from archbench.measure.flops import MacCount, count_macs
from archbench.measure.params import ParamCount, count_params

__all__ = ["MacCount", "ParamCount", "count_macs", "count_params"]
