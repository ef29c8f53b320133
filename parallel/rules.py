"""Strategies as data: tables from the models' logical axis names to mesh axes.

A strategy is four tables (as in Levanter/Haliax, storage is mapped apart from compute):

=============  ==============================================================
``compute``    activations, and parameters while a layer uses them
``params``     parameters at rest (in the train state, in checkpoints)
``opt_state``  optimizer moments at rest
``grads``      gradients as the optimizer receives them
=============  ==============================================================

Logical names: the vocabulary of ``parallel/axes.py`` (``batch``, ``seq``, ``length``,
``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``, ``layers``, ``expert``, ...). Every table
lists every one of them (``None``: replicated), so a known name is never missing from a table
and an unknown one is an error wherever it appears. Mesh axes: ``data``, ``fsdp``, ``expert``,
``tensor`` (see mesh.py).

- Data parallel: ``batch`` over (data, fsdp, expert); everything else replicated.
- GShard expert parallel (Lepikhin et al. 2021): ``expert`` → expert. Tokens are split over
  the expert axis like any batch axis; dispatched buffers [groups, experts, capacity, embed]
  are resharded from groups to experts (``expert_group`` → (data, fsdp)): one all-to-all
  there and one back.
- ZeRO-1/2/3 (Rajbhandari et al. 2020) over the whole data-parallel group, as DeepSpeed
  partitions: ``embed`` → every live one of (data, fsdp) in the optimizer state (1), also the
  gradients (2), also the parameters at rest (3). Compute keeps ``embed`` unsharded, so a
  stage-3 layer's parameters are all-gathered where it runs. ``data`` and ``fsdp`` thus differ
  only in name; a stage on a multi-device mesh without either (e.g. tensor only) is refused.
- Megatron tensor parallel (Shoeybi et al. 2019): ``heads``, ``mlp``, ``vocab`` → tensor.
- Megatron sequence parallel (Korthikanti et al. 2022): ``seq`` → tensor as well.
- Pipeline parallel (Huang et al. 2019; Narayanan et al. 2021): ``layers`` → stage, in every
  table: each stage holds a contiguous block of the scanned stack, at rest and in compute
  (``parallel/pipeline/``; the executor is ``lineage_jax/train/pipeline.py``).

Every sharding in the project is derived from these tables through ``spec_for``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from parallel.axes import LOGICAL_AXES, check_names, unknown_name
from parallel.mesh import MeshError

Rules = tuple[tuple[str, Any], ...]

DATA_PARALLEL: Rules = (("batch", ("data", "fsdp", "expert")), ("expert_group", ("data", "fsdp")))
EXPERT: Rules = (("expert", "expert"),)
ZERO_AXES = ("data", "fsdp")   # the data-parallel axes ZeRO partitions over (not expert: expert weights use it)
TENSOR: Rules = (("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))
SEQUENCE: Rules = (("seq", "tensor"),)
PIPELINE: Rules = (("layers", "stage"),)


@dataclasses.dataclass(frozen=True)
class Strategy:
    compute: Rules
    params: Rules
    opt_state: Rules
    grads: Rules
    zero_stage: int = 0

    def __post_init__(self):
        for name, table in self.tables().items():
            check_rules(table, f"strategy table '{name}'")

    def tables(self) -> dict[str, Rules]:
        return {"compute": self.compute, "params": self.params, "opt_state": self.opt_state, "grads": self.grads}


def strategy_for(mesh_shape: Mapping[str, int], *, zero_stage: int = 0, sequence_parallel: bool = False) -> Strategy:
    """Compose the tables for a mesh: DP always; ZeRO over data × fsdp by stage; EP if expert > 1;
    TP (+SP) if tensor > 1; PP (``layers`` → stage) if stage > 1."""
    if zero_stage not in (0, 1, 2, 3):
        raise MeshError(f"zero_stage={zero_stage}: allowed 0, 1, 2, 3")
    if sequence_parallel and mesh_shape.get("tensor", 1) == 1:
        raise MeshError("parallel.sequence_parallel=true needs mesh.tensor > 1 (the sequence is split over it)")
    compute = DATA_PARALLEL
    if mesh_shape.get("expert", 1) > 1:
        compute = compute + EXPERT
    if mesh_shape.get("tensor", 1) > 1:
        compute = compute + TENSOR + (SEQUENCE if sequence_parallel else ())
    if mesh_shape.get("stage", 1) > 1:
        compute = compute + PIPELINE
    zero_axes = tuple(a for a in ZERO_AXES if mesh_shape.get(a, 1) > 1)
    if zero_stage and not zero_axes and math.prod(mesh_shape.values()) > 1:
        raise MeshError(f"parallel.zero_stage={zero_stage} partitions over the data-parallel axes mesh.data × "
                        f"mesh.fsdp, which are 1 here; give one of them the devices (e.g. mesh.fsdp=-1) or set "
                        f"parallel.zero_stage=0")
    sharded = compute + ((("embed", _one(zero_axes)),) if zero_axes else ())
    return Strategy(compute=complete(compute),
                    params=complete(sharded if zero_stage >= 3 else compute),
                    opt_state=complete(sharded if zero_stage >= 1 else compute),
                    grads=complete(sharded if zero_stage >= 2 else compute),
                    zero_stage=zero_stage)


def complete(rules: Rules) -> Rules:
    """``rules`` followed by every other name of the vocabulary, replicated (mapped to None)."""
    check_rules(rules, "sharding rules", every=False)
    listed = {name for name, _ in rules}
    return tuple(rules) + tuple((name, None) for name in LOGICAL_AXES if name not in listed)


def check_rules(rules: Rules, what: str = "sharding rules", every: bool = True) -> None:
    """Each name of the vocabulary once (``every`` one of them by default): an unknown, duplicate
    or missing name is an error, never silently resolved."""
    seen = set()
    for name, _ in rules:
        check_names([name], what)
        if name in seen:
            raise MeshError(f"{what}: logical axis '{name}' is mapped twice; give each logical axis one rule")
        seen.add(name)
    missing = [name for name in LOGICAL_AXES if name not in seen]
    if every and missing:
        raise MeshError(f"{what}: no rule for logical axes {', '.join(missing)}; list every name of "
                        f"parallel/axes.py (None: replicated)")


def _one(axes: tuple[str, ...]):
    """A rule's target: the axis name itself for one axis."""
    return axes[0] if len(axes) == 1 else axes


def _mesh_axes(target) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def spec_for(logical: Sequence[str | None], rules: Rules, what: str = "array") -> P:
    """Logical axis names -> PartitionSpec, by a complete table (see ``complete``).

    A name outside the vocabulary is an error naming ``what``; so are two logical axes of one
    array mapped onto the same mesh axis (a conflict).
    """
    table = dict(rules)
    check_names(logical, what)
    out, used = [], {}
    for name in logical:
        if name is not None and name not in table:
            raise MeshError(f"{what}: the rules table has no rule for '{name}'; build tables with rules.complete")
        target = table[name] if name is not None else None
        for axis in _mesh_axes(target):
            if axis in used:
                raise MeshError(f"{what}: logical axes '{used[axis]}' and '{name}' both map to mesh axis '{axis}'; "
                                f"change one of their rules")
            used[axis] = name
        out.append(target)
    return P(*out)


def logical_to_sharding(logical_specs, mesh: Mesh, rules: Rules):
    """A pytree of logical PartitionSpecs (from ``nn.get_partition_spec``) -> NamedShardings."""
    return jax.tree_util.tree_map_with_path(
        lambda path, s: NamedSharding(mesh, spec_for(tuple(s), rules, jax.tree_util.keystr(path))), logical_specs,
        is_leaf=lambda x: isinstance(x, P))


def _axis_size(mesh: Mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in _mesh_axes(axes))


def check_divisible(shapes, logical_specs, mesh: Mesh, rules: Rules) -> None:
    """Every sharded dimension must divide by the product of its mesh axes; say which one doesn't."""
    table = dict(rules)
    flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
    flat_specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, P))
    for (path, leaf), spec in zip(flat_shapes, flat_specs):
        spec_for(tuple(spec), rules, f"parameter {jax.tree_util.keystr(path)}")
        for dim, name in zip(leaf.shape, tuple(spec)):
            n = _axis_size(mesh, table.get(name)) if name else 1
            if dim % n:
                hint = "; pad it (model.vocab_multiple)" if name == "vocab" else ""
                raise MeshError(f"parameter {jax.tree_util.keystr(path)}: logical axis '{name}' has size {dim}, "
                                f"which mesh axes {table[name]} (size {n}) do not divide{hint}; "
                                f"pick mesh sizes dividing {dim}")


def check_batch(batch_size: int, mesh: Mesh, rules: Rules, what: str = "train.batch_size") -> None:
    n = _axis_size(mesh, dict(rules).get("batch"))
    if batch_size % n:
        raise MeshError(f"{what}={batch_size} does not split over the {n} data-parallel devices; use a multiple of {n}")


class _UnknownNameGuard:
    """A last rule that no name matches, but that every name is compared with: Flax resolves a
    constraint by testing each rule's name ``in`` the array's names, and for a string name
    ``name == guard`` falls back to this ``__eq__``, which rejects names outside the vocabulary."""

    def __eq__(self, other):
        if isinstance(other, str) and other not in LOGICAL_AXES:
            raise unknown_name(other, "activation constraint (nn.with_logical_constraint)")
        return other is self

    __hash__ = object.__hash__


def axis_rules(rules: Rules):
    """Context in which the models' logical constraints resolve with these (complete) rules; a
    constraint naming an unknown axis raises while tracing."""
    check_rules(rules)
    return nn.logical_axis_rules(tuple(rules) + ((_UnknownNameGuard(), None),))
