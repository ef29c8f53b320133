"""The named strategies: one list, read by ``lineage shard-report --compare``,
``scripts/compare_strategies.py`` and docs/parallelism.md (a test checks the doc's names).

Each is plain data: mesh sizes (``-1`` absorbs the devices the others leave, as in mesh.py)
and the ``parallel`` options that pick the rule tables (``rules.strategy_for``).
"""
from __future__ import annotations

from typing import Mapping

from parallel.mesh import resolve_mesh_shape
from parallel.rules import Strategy, strategy_for


def _named(data=1, fsdp=1, expert=1, tensor=1, zero_stage=0, sequence_parallel=False) -> dict:
    return {"mesh": {"data": data, "fsdp": fsdp, "expert": expert, "tensor": tensor},
            "parallel": {"zero_stage": zero_stage, "sequence_parallel": sequence_parallel}}


NAMED: dict[str, dict] = {
    "DP": _named(data=-1),                                              # data parallel
    "ZeRO-1": _named(fsdp=-1, zero_stage=1),                            # Rajbhandari et al. 2020
    "ZeRO-2": _named(fsdp=-1, zero_stage=2),
    "ZeRO-3": _named(fsdp=-1, zero_stage=3),
    "TP2×DP": _named(data=-1, tensor=2),                                # Shoeybi et al. 2019
    "TP2+SP×DP": _named(data=-1, tensor=2, sequence_parallel=True),     # Korthikanti et al. 2022
    "TP2×FSDP": _named(fsdp=-1, tensor=2, zero_stage=3),
    "DP×FSDP2×TP2": _named(data=-1, fsdp=2, tensor=2, zero_stage=3, sequence_parallel=True),
    "EP": _named(expert=-1),                                            # Lepikhin et al. 2021
}


def strategy_named(name: str, n_devices: int) -> tuple[dict[str, int], Strategy]:
    """The mesh shape and rule tables of ``NAMED[name]`` on ``n_devices``."""
    over: Mapping = NAMED[name]
    shape = resolve_mesh_shape(over["mesh"], n_devices)
    return shape, strategy_for(shape, **over["parallel"])
