"""Collectives in optimized HLO text: kind, count, bytes moved per device, replica groups
(the spellings are listed in ``hlo.py``), and loop trip counts; ring estimates of bytes sent.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import numpy as np

from parallel.report.hlo import attr, call_paths, called, ints, loop_context, op_name, parse_module, shape_bytes

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
         "ragged-all-to-all", "collective-broadcast")
_KIND_SET = frozenset(KINDS)


def group_size(groups: str | None, n_devices: int | None = None) -> int | None:
    """Devices per replica group for any of the three ``replica_groups`` spellings.

    ``{}`` (or no groups) means one group of all devices, so ``n_devices`` is returned."""
    if not groups or groups.strip() in ("{}", "{{}}"):
        return n_devices
    g = groups.strip()
    if g.startswith("mesh["):
        sizes = {}
        for name, size in re.findall(r"'?([\w.\-]+)'?\s*=\s*(\d+)", g[5:g.index("]")]):
            sizes[name] = int(size)
        axes = g[g.rindex("{") + 1:g.rindex("}")]
        n = 1
        for ref in (a.strip() for a in axes.split(",") if a.strip()):
            sub = re.fullmatch(r"'?([\w.\-]+)'?\s*:\s*\((\d+)\)\s*(\d+)", ref)
            n *= int(sub.group(3)) if sub else sizes.get(ref.strip("'"), 1)
        return n
    if g.startswith("["):
        dims = [int(d) for d in g[1:g.index("]")].split(",") if d]
        return dims[-1] if dims else n_devices
    if g.startswith("{{"):
        first = g[2:g.index("}")]
        return len([d for d in first.split(",") if d.strip()])
    return n_devices


def _iota(dims: Sequence[int], reshape: Sequence[int], perm: Sequence[int] | None) -> np.ndarray:
    ids = np.arange(math.prod(reshape)).reshape(reshape)
    if perm:
        ids = ids.transpose(perm)
    return ids.reshape(dims)

def replica_group_list(groups: str | None, n_devices: int) -> list[list[int]]:
    """Any ``replica_groups`` spelling expanded to explicit device-id lists, e.g.
    ``[2,4]<=[8]`` and ``mesh['a'=2,'b'=4] {'b'}`` -> ``[[0,1,2,3],[4,5,6,7]]``;
    ``{}`` -> one group of all ``n_devices``. (jax 0.10 prints shard_map groups explicitly,
    jax 0.11 in the mesh form: this makes them comparable.)"""
    g = (groups or "").strip()
    if not g or g in ("{}", "{{}}"):
        return [list(range(n_devices))]
    if g.startswith("{"):
        return [ints(grp) for grp in re.findall(r"\{([\d,\s]*)\}", g[1:-1])]
    if g.startswith("["):
        m = re.fullmatch(r"\[([\d,]*)\]<=\[([\d,]*)\](?:T\(([\d,]*)\))?", g)
        if not m:
            raise ValueError(f"unrecognised iota replica groups '{g}'")
        return _iota(ints(m.group(1)), ints(m.group(2)), ints(m.group(3) or "")).tolist()
    if g.startswith("mesh["):
        axes_txt = g[5:g.index("]")]
        names = [n.strip("'") for n, _ in re.findall(r"('?[\w.\-]+'?)\s*=\s*(\d+)", axes_txt)]
        sizes = [int(s) for _, s in re.findall(r"('?[\w.\-]+'?)\s*=\s*(\d+)", axes_txt)]
        n = math.prod(sizes)
        dev = np.arange(n).reshape(sizes)
        m = re.search(r"device_ids=\((.*)\)\s*\{", g)
        if m:
            spec = m.group(1).strip()
            it = re.fullmatch(r"\[([\d,]*)\](?:<=\[([\d,]*)\])?(?:T\(([\d,]*)\))?", spec)
            if it:                                          # iota tile assignment [reshape]T(perm)
                reshape = ints(it.group(2) or it.group(1))
                dev = _iota(sizes, reshape, ints(it.group(3) or "")).reshape(sizes)
            else:
                dev = np.asarray(ints(spec)).reshape(sizes)
        refs = [r.strip() for r in g[g.rindex("{") + 1:g.rindex("}")].split(",") if r.strip()]
        # Split every mesh axis into digits (major to minor) so that each referenced (sub-)axis is one digit.
        digits: list[list[int]] = [[s] for s in sizes]       # per axis, digit sizes
        picked = []                                          # (axis, pre, size) in listed order
        for ref in refs:
            sub = re.fullmatch(r"'?([\w.\-]+)'?\s*:\s*\((\d+)\)\s*(\d+)", ref)
            name = sub.group(1) if sub else ref.strip("'")
            a = names.index(name)
            picked.append((a, int(sub.group(2)), int(sub.group(3))) if sub else (a, 1, sizes[a]))
        for a in range(len(sizes)):
            cuts = sorted({c for ax, pre, size in picked if ax == a for c in (pre, pre * size)} | {1, sizes[a]})
            digits[a] = [hi // lo for lo, hi in zip(cuts, cuts[1:])]
        flat_sizes = [d for ds in digits for d in ds]
        offsets = np.cumsum([0] + [len(ds) for ds in digits])
        arr = dev.reshape(flat_sizes)
        grouped = []
        for a, pre, size in picked:
            cuts = sorted({c for ax, p, s in picked if ax == a for c in (p, p * s)} | {1, sizes[a]})
            grouped.append(offsets[a] + cuts.index(pre))
        rest = [i for i in range(len(flat_sizes)) if i not in grouped]
        return arr.transpose(rest + grouped).reshape(-1, math.prod(flat_sizes[i] for i in grouped)).tolist()
    raise ValueError(f"unrecognised replica groups '{g}'")


def _kind_of(opcode: str) -> tuple[str | None, bool]:
    """(collective kind, is-async-start) of an opcode; (None, False) for anything else."""
    if opcode in _KIND_SET:
        return opcode, False
    if opcode.endswith("-start") and opcode[:-6] in _KIND_SET:
        return opcode[:-6], True
    return None, False


def collectives_by_op(hlo_text: str) -> list[dict]:
    """Every collective instruction of an optimized HLO module, in text order.

    Each entry: ``kind`` (one of KINDS), ``opcode`` (as printed, e.g. ``all-reduce-start``),
    ``name``, ``computation``, ``shape`` (result shape text; the ``-done``'s for async ops),
    ``bytes``, ``sent_bytes``, ``replica_groups`` (raw text; ``source_target_pairs`` for a
    collective-permute), ``group_size`` (devices per group; 2 for a permute's pairs), ``op_name`` (from ``metadata``, '' if absent),
    ``in_loop`` (inside a ``while`` body/condition, i.e. a ``scan``: executes once per
    iteration though it appears once), ``trip_count`` (product of the enclosing loops'
    ``known_trip_count``; None when unknown, 1 outside loops) and ``path`` (the enclosing loops
    and conditional branches, ``hlo.call_paths``).

    ``bytes`` is the size of the array(s) the collective works on, per device, one execution:
      all-reduce          operand size (= result size)
      all-gather          gathered result size (the full array each device ends up with)
      reduce-scatter      input (operand) size, i.e. the full array before scattering
      all-to-all          operand size (= result size)
      collective-permute  operand size (= result size)
    summed over tuple elements for combined (tuple-shaped) collectives.

    ``sent_bytes`` is the bandwidth-optimal (ring) estimate of the bytes each device sends,
    with n = ``group_size``: all-reduce 2·B·(n−1)/n; all-gather, reduce-scatter, all-to-all
    B·(n−1)/n; collective-permute B. This is the convention of ``comm_theory_bytes``.
    """
    comps, entry, n_devices = parse_module(hlo_text)
    shapes = {ins["name"]: ins["shape"] for body in comps.values() for ins in body}
    done_of = {}                                   # start name -> its -done instruction's shape
    wrapped = set()                                # computations run by a sugared <op>-start
    update_of = {ins["name"]: ins["operands"][0] for body in comps.values() for ins in body
                 if ins["opcode"].endswith("-update") and ins["operands"]}   # start -> update(s) -> done
    for body in comps.values():
        for ins in body:
            if ins["opcode"].endswith("-done") and ins["operands"]:
                start = ins["operands"][0]
                while start in update_of:
                    start = update_of[start]
                done_of[start] = ins["shape"]
            if ins["opcode"].endswith("-start") and ins["opcode"] != "async-start":
                wrapped.update(c for _, c in called(ins["attrs"], comps))
    ctx = loop_context(comps, entry)
    paths = call_paths(comps, entry)
    out = []
    for comp, body in comps.items():
        if comp in wrapped:
            continue
        in_loop, trips = ctx.get(comp, (False, 1))
        for ins in body:
            kind, is_start = _kind_of(ins["opcode"])
            if kind is None:
                continue
            result = done_of.get(ins["name"], ins["shape"]) if is_start else ins["shape"]
            operand_bytes = sum(shape_bytes(shapes.get(o, "")) for o in ins["operands"])
            attrs = ins["attrs"]
            groups = attr(attrs, "replica_groups")
            if kind == "collective-permute":
                groups = attr(attrs, "source_target_pairs") or groups
                n = 2
            else:
                n = group_size(groups, n_devices) or n_devices
            if is_start and ins["name"] not in done_of and kind == "all-gather":
                nbytes = shape_bytes(result) - operand_bytes        # (operands..., outputs...) tuple
            elif kind == "reduce-scatter":
                nbytes = operand_bytes or shape_bytes(result) * n
            elif is_start and ins["name"] not in done_of:
                nbytes = operand_bytes or shape_bytes(result)
            else:
                nbytes = shape_bytes(result)
            out.append({"kind": kind, "opcode": ins["opcode"], "name": ins["name"], "computation": comp,
                        "shape": result, "bytes": nbytes, "sent_bytes": _sent(kind, nbytes, n),
                        "replica_groups": groups or "", "group_size": n,
                        "op_name": op_name(attrs),
                        "in_loop": in_loop, "trip_count": trips if in_loop else 1,
                        "path": paths.get(comp, ())})
    return out


def _sent(kind: str, nbytes: int, n: int) -> int:
    if kind == "collective-permute" or kind == "collective-broadcast":
        return nbytes
    if n <= 1:
        return 0
    factor = 2 if kind == "all-reduce" else 1
    return factor * nbytes * (n - 1) // n


def scale_by_trip_count(ops: Iterable[dict], trip_count: int | str = "auto") -> list[dict]:
    """Per-execution view of ``collectives_by_op``: in-loop entries get ``count`` = trip count.

    ``trip_count`` an int: every in-loop instruction executes that many times (e.g. the number
    of layers of a scanned stack; nested loops are not multiplied further). ``"auto"``: use
    XLA's ``known_trip_count`` product recorded per op (1 when unknown). ``bytes`` and
    ``sent_bytes`` are multiplied by ``count``; entries outside loops get ``count`` = 1.
    """
    out = []
    for op in ops:
        if not op["in_loop"]:
            k = 1
        elif trip_count == "auto":
            k = op.get("trip_count") or 1
        else:
            k = int(trip_count)
        out.append(dict(op, count=k, bytes=op["bytes"] * k, sent_bytes=op["sent_bytes"] * k))
    return out


def summarize(ops: Iterable[dict]) -> list[dict]:
    """Aggregate per-op entries by kind (in KINDS order): ``kind``, ``count``, ``bytes``,
    ``sent_bytes``, ``replica_groups`` (sorted distinct strings), ``in_loop`` (how many of the
    instructions sit inside a while loop)."""
    agg: dict[str, dict] = {}
    for op in ops:
        a = agg.setdefault(op["kind"], {"kind": op["kind"], "count": 0, "bytes": 0, "sent_bytes": 0,
                                         "replica_groups": set(), "in_loop": 0})
        a["count"] += op.get("count", 1)
        a["bytes"] += op["bytes"]
        a["sent_bytes"] += op["sent_bytes"]
        if op["replica_groups"]:
            a["replica_groups"].add(op["replica_groups"])
        a["in_loop"] += bool(op["in_loop"])
    return [dict(agg[k], replica_groups=sorted(agg[k]["replica_groups"])) for k in KINDS if k in agg]


def collectives(hlo_text: str, trip_count: int | str | None = None) -> list[dict]:
    """One entry per collective kind present in ``compiled.as_text()`` (see ``collectives_by_op``
    for what ``bytes`` means per kind): ``kind``, ``count``, ``bytes``, ``sent_bytes``,
    ``replica_groups`` (distinct group strings, e.g. ``{{0,1,2,3},{4,5,6,7}}`` or
    ``[2,4]<=[8]``) and ``in_loop`` (number of those instructions inside a while loop).

    ``trip_count=None`` counts each instruction once, as it appears in the text (a collective
    in a scanned layer body counts once). An int or ``"auto"`` counts executions instead:
    see ``scale_by_trip_count``.
    """
    ops = collectives_by_op(hlo_text)
    if trip_count is not None:
        ops = scale_by_trip_count(ops, trip_count)
    return summarize(ops)

