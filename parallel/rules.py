"""Strategies as data: tables from the models' logical axis names to mesh axes.

Every parameter and activation sharding is derived from one table through
``logical_to_sharding``; nothing else in the project names a mesh axis for a tensor.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from parallel.mesh import MeshError

Rules = tuple[tuple[str, Any], ...]

# Batch over every data-like axis; parameters and model dimensions replicated (pure data parallel).
DATA_PARALLEL: Rules = (("batch", ("data", "fsdp")),)
# ZeRO-3 / FSDP: parameters stored sharded along their `embed` axis over `fsdp`.
FSDP: Rules = DATA_PARALLEL + (("embed", "fsdp"),)
# Megatron tensor parallel: heads, MLP hidden and vocabulary split over `tensor`.
TENSOR: Rules = (("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))


def rules_for(mesh_shape: Mapping[str, int]) -> Rules:
    """The table for a mesh: data parallel always; FSDP and tensor rules where those axes are > 1."""
    rules = FSDP if mesh_shape.get("fsdp", 1) > 1 else DATA_PARALLEL
    if mesh_shape.get("tensor", 1) > 1:
        rules = rules + TENSOR
    check_rules(rules)
    return rules


def check_rules(rules: Rules) -> None:
    """Duplicate logical names are an error, never silently resolved."""
    seen = set()
    for name, _ in rules:
        if name in seen:
            raise MeshError(f"sharding rules: logical axis '{name}' is mapped twice; give each logical axis one rule")
        seen.add(name)


def spec_for(logical: Sequence[str | None], rules: Rules) -> P:
    """Logical axis names -> PartitionSpec (unlisted names are replicated)."""
    table = dict(rules)
    return P(*(table.get(name) if name is not None else None for name in logical))


def logical_to_sharding(logical_specs, mesh: Mesh, rules: Rules):
    """A pytree of logical PartitionSpecs (from ``nn.get_partition_spec``) -> NamedShardings."""
    return jax.tree.map(lambda s: NamedSharding(mesh, spec_for(tuple(s), rules)), logical_specs,
                        is_leaf=lambda x: isinstance(x, P))


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def check_divisible(shapes, logical_specs, mesh: Mesh, rules: Rules) -> None:
    """Every sharded dimension must divide by the product of its mesh axes; say which one doesn't."""
    table = dict(rules)
    flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
    flat_specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P))
    for (path, leaf), spec in zip(flat_shapes, flat_specs):
        for dim, name in zip(leaf.shape, tuple(spec)):
            n = _axis_size(mesh, table.get(name)) if name else 1
            if dim % n:
                raise MeshError(f"parameter {jax.tree_util.keystr(path)}: logical axis '{name}' has size {dim}, "
                                f"which mesh axes {table[name]} (size {n}) do not divide; pick mesh sizes dividing {dim}")


def check_batch(batch_size: int, mesh: Mesh, rules: Rules, what: str = "train.batch_size") -> None:
    n = _axis_size(mesh, dict(rules).get("batch"))
    if batch_size % n:
        raise MeshError(f"{what}={batch_size} does not split over the {n} data-parallel devices; use a multiple of {n}")


def axis_rules(rules: Rules):
    """Context in which the models' logical activation constraints resolve with these rules."""
    return nn.logical_axis_rules(rules)
