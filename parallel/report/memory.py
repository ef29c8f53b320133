"""What a compiled program keeps per device: its memory analysis, and each parameter's bytes
under its sharding (``param_table``), with a warning for large replicated ones.

Pure functions over compiled programs (``jax.stages.Compiled``) and pytrees of shapes and
shardings; knows logical axis names and shardings, never models.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np

from parallel.report.format import fmt_bytes

_MEMORY_FIELDS = {"arguments": "argument_size_in_bytes", "outputs": "output_size_in_bytes",
                  "temp": "temp_size_in_bytes", "alias": "alias_size_in_bytes",
                  "generated_code": "generated_code_size_in_bytes", "peak": "peak_memory_in_bytes"}


def memory(compiled) -> dict:
    """Per-device memory of a compiled program, in bytes, from ``compiled.memory_analysis()``.

    ``arguments``: the input buffers of one device (its shards of params, optimizer state and
    batch), donated ones included. ``outputs``: the result buffers. ``alias``: output bytes that
    reuse (alias) an input buffer, from ``donate_argnums``: counted in both of the above.
    ``temp``: the scratch XLA's buffer assignment reserves for intermediates (activations kept
    for backward, gathered parameters, gradients before their reduction...), after buffer
    sharing. ``total`` = arguments + outputs + temp − alias: what the program needs resident at
    once, an upper bound of its live memory. ``peak`` and ``generated_code`` are passed through
    when the backend reports them (None otherwise). Every field is None, and ``available`` is
    False, when the backend gives no analysis; ``compiled`` may also be the stats object itself.
    """
    stats = compiled
    if hasattr(compiled, "memory_analysis"):
        try:
            stats = compiled.memory_analysis()
        except Exception:                                   # backends without the analysis
            stats = None
    if isinstance(stats, (list, tuple)):
        stats = stats[0] if stats else None
    out: dict[str, Any] = {}
    for key, attr in _MEMORY_FIELDS.items():
        v = getattr(stats, attr, None) if stats is not None else None
        out[key] = int(v) if isinstance(v, (int, np.integer)) and v >= 0 else None
    parts = [out["arguments"], out["outputs"], out["temp"]]
    out["available"] = any(p is not None for p in parts)
    out["total"] = (sum(p or 0 for p in parts) - (out["alias"] or 0)) if out["available"] else None
    return out


def _itemsize(dtype) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        return int(getattr(dtype, "itemsize", 4))


def leaf_bytes_per_device(leaf, sharding=None) -> int:
    """Bytes one device stores of ``leaf`` (array or ShapeDtypeStruct) under ``sharding``
    (default: the leaf's own ``.sharding``, else replicated)."""
    shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
    dtype = getattr(leaf, "dtype", np.asarray(leaf).dtype)
    sharding = sharding if sharding is not None else getattr(leaf, "sharding", None)
    if sharding is not None and hasattr(sharding, "shard_shape"):
        shape = tuple(sharding.shard_shape(shape))
    return math.prod(shape) * _itemsize(dtype)


def tree_bytes_per_device(tree, shardings=None) -> int:
    """Sum of ``leaf_bytes_per_device`` over a pytree; ``shardings`` is a pytree of Shardings with
    the same structure (or None to use each leaf's ``.sharding``)."""
    leaves = jax.tree.leaves(tree)
    if shardings is None:
        return sum(leaf_bytes_per_device(x) for x in leaves)
    if isinstance(shardings, jax.sharding.Sharding):
        return sum(leaf_bytes_per_device(x, shardings) for x in leaves)
    shs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    if len(shs) != len(leaves):
        raise ValueError(f"tree_bytes_per_device: {len(leaves)} leaves but {len(shs)} shardings")
    return sum(leaf_bytes_per_device(x, s) for x, s in zip(leaves, shs))


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path) -> str:
    """``blocks/attn/query/kernel`` from a pytree key path."""
    return "/".join(_key_str(k) for k in path)


def _spec_str(spec) -> str:
    return str(spec).replace("PartitionSpec", "P")


def _spec_axes(spec) -> tuple[str, ...]:
    """Mesh axes named anywhere in a PartitionSpec."""
    out = []
    for entry in (spec or ()):
        out += [entry] if isinstance(entry, str) else list(entry or ())
    return tuple(out)


def param_table(abstract_params, logical_specs=None, shardings=None) -> list[dict]:
    """One row per parameter leaf: ``path``, ``logical`` (tuple of logical axis names, None if no
    specs), ``spec`` (str of the mesh PartitionSpec, e.g. ``P('fsdp', None)``), ``shape``,
    ``dtype``, ``bytes`` (whole array), ``bytes_per_device`` (``sharding.shard_shape(shape)``)
    and ``replicated`` (the sharding stores a full copy on every device)."""
    flat = jax.tree_util.tree_leaves_with_path(abstract_params)
    is_p = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
    specs = jax.tree.leaves(logical_specs, is_leaf=is_p) if logical_specs is not None else [None] * len(flat)
    if shardings is None:
        shs = [getattr(leaf, "sharding", None) for _, leaf in flat]
    else:
        shs = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
    if not (len(flat) == len(specs) == len(shs)):
        raise ValueError(f"param_table: {len(flat)} params, {len(specs)} logical specs, {len(shs)} shardings")
    rows = []
    for (path, leaf), spec, sh in zip(flat, specs, shs):
        shape = tuple(leaf.shape)
        full = math.prod(shape) * _itemsize(leaf.dtype)
        per = leaf_bytes_per_device(leaf, sh) if sh is not None else full
        mesh_spec = getattr(sh, "spec", None)
        rows.append({"path": path_str(path), "logical": tuple(spec) if spec is not None else None,
                     "spec": _spec_str(mesh_spec) if mesh_spec is not None else ("P()" if sh is not None else "-"),
                     "shape": shape, "dtype": str(np.dtype(leaf.dtype)) if hasattr(leaf, "dtype") else "",
                     "bytes": full, "bytes_per_device": per, "mesh_axes": _spec_axes(mesh_spec),
                     "replicated": bool(getattr(sh, "is_fully_replicated", per == full)) if sh is not None else True})
    return rows


def replicated_warnings(table: Sequence[dict], mesh_size: int, threshold_bytes: int = 1 << 20) -> list[str]:
    """One line per parameter of at least ``threshold_bytes`` stored as a full copy on each of
    ``mesh_size`` > 1 devices (nothing to say on one device)."""
    if mesh_size <= 1:
        return []
    out = []
    for row in table:
        if row["bytes_per_device"] >= row["bytes"] and row["bytes"] >= threshold_bytes:
            out.append(f"{row['path']}: {fmt_bytes(row['bytes'])} stored fully replicated on each of {mesh_size} "
                       f"devices (logical {row['logical']} -> {row['spec']}); map one of its logical axes to a mesh "
                       f"axis to shard it")
    return out
