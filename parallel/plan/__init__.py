"""``lineage plan``'s engine: chip figures with sources (``chips.py``), memory / collective / FLOP
formulas (``cost.py``), and the enumeration and roofline ranking (``search.py``). Knows no models."""
from parallel.plan.chips import CHIPS, Chip
from parallel.plan.cost import (Shape, collective_bytes, memory_per_chip, n_params, per_chip_params,
                                shape_for_params, train_flops, weight_groups)
from parallel.plan.search import OVERLAPS, REMATS, plan, step_time

__all__ = ["CHIPS", "Chip", "OVERLAPS", "REMATS", "Shape", "collective_bytes", "memory_per_chip", "n_params", "per_chip_params",
           "plan", "shape_for_params", "step_time", "train_flops", "weight_groups"]
