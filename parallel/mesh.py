"""Device meshes from a plain {axis: size} mapping; -1 absorbs the remaining devices.

Knows nothing of models or of lineage_jax's config types: callers pass plain dicts.
"""
from __future__ import annotations

import math
from typing import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "expert", "tensor")  # the order of axes in every mesh (outermost first)
STAGE = "stage"   # pipeline stages (parallel/pipeline/): outermost, as Megatron-LM puts them across nodes;
                  # in a mesh only when its size is > 1, so every other mesh keeps the four axes above


class MeshError(ValueError):
    """A mesh or sharding problem, stated in one line."""


def resolve_mesh_shape(axes: Mapping[str, int], n_devices: int) -> dict[str, int]:
    """Fill in the one -1 axis so the product equals ``n_devices``; reject any mismatch."""
    unknown = set(axes) - set(MESH_AXES) - {STAGE}
    if unknown:
        raise MeshError(f"unknown mesh axis '{sorted(unknown)[0]}'; allowed: {', '.join(MESH_AXES)}")
    stages = int(axes.get(STAGE, 1))
    if stages < 1:
        raise MeshError(f"mesh: {STAGE}={stages}; the pipeline stages must be >= 1")
    shape = ({STAGE: stages} if stages > 1 else {}) | {a: int(axes.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in shape.items() if s == -1]
    fixed = math.prod(s for s in shape.values() if s != -1)
    if len(free) > 1:
        raise MeshError(f"mesh: only one axis may be -1, got {', '.join('mesh.' + a for a in free)}")
    if free:
        if n_devices % fixed:
            raise MeshError(f"mesh: the fixed axes ({_fmt(shape)}) use {fixed} devices, which does not divide "
                            f"the {n_devices} available; choose sizes whose product divides {n_devices}")
        shape[free[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise MeshError(f"mesh: {_fmt(shape)} needs {fixed} devices but {n_devices} are available; "
                        f"make the product {n_devices} (or set one axis to -1)")
    return shape


def make_mesh(axes: Mapping[str, int], devices=None) -> Mesh:
    """A GSPMD-style (Auto axes) mesh over ``devices`` (default: all) with axes MESH_AXES (after
    ``stage`` when ``axes`` asks for more than one pipeline stage).

    Devices are grouped by process (stably, each process's own order kept), so with several
    processes the process boundary falls on the outer axes (data, fsdp) and each tensor / expert
    group, the innermost axes, stays inside one process (``distributed.check_process_boundary``)."""
    devices = order_by_process(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(axes, len(devices))
    names = tuple(shape)
    return Mesh(np.asarray(devices).reshape(tuple(shape.values())), names, axis_types=(AxisType.Auto,) * len(names))


def order_by_process(devices) -> list:
    """``devices`` grouped by process, each process's own order kept (a stable sort)."""
    return sorted(devices, key=lambda d: d.process_index)


def _fmt(shape: Mapping[str, int]) -> str:
    return " × ".join(f"{a}={s}" for a, s in shape.items())
