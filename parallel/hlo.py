"""Collectives in optimized HLO text: kind, count, bytes moved per device, replica groups;
and the matrix products (``dots_by_op``) with their operand shapes and dimension numbers.

Pure functions over ``compiled.as_text()``; ``parallel/introspect.py`` builds the shard report on them.

HLO text facts this parser relies on (verified on XLA:CPU, 8 emulated devices, jax 0.10.2 and 0.11.2)
-------------------------------------------------------------------------------------------------
* One instruction per line: ``[ROOT ]%name = SHAPE opcode(%operand, ...), attr=..., ...``.
  Operands are printed by name only, so operand shapes come from the defining instruction.
  Computations open with an unindented ``[ENTRY ]%name (params) -> shape {`` line.
* XLA:CPU emits the synchronous opcodes ``all-reduce``, ``all-gather``, ``reduce-scatter``,
  ``all-to-all``, ``collective-permute``. GPU backends emit the async pairs
  ``all-reduce-start``/``-done``, ``all-gather-start``/``-done``,
  ``collective-permute-start``/``-done`` and, for wrapped async ops, ``<op>-start``/``<op>-done``
  (or a bare ``async-start`` whose ``calls=`` computation holds the plain op). Each async
  collective is counted once, at its ``-start``; ``-done`` is never counted.
* Results may be tuples: ``(f32[512,256]{1,0}, f32[256,512]{1,0}) all-reduce(%a, %b)`` (a
  combined all-reduce) or the all-to-all form with one ``f32[1,128]`` element per peer;
  ``/*index=5*/`` comments can appear inside long tuples.
* Replica groups come in three spellings:
  explicit ``replica_groups={{0,1,2,3},{4,5,6,7}}``; iota ``replica_groups=[2,4]<=[8]`` or
  ``[4,2]<=[2,4]T(1,0)`` (shape ``[num_groups, group_size]``); and the mesh-axes form
  ``replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}`` or, for a non-iota device order,
  ``mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}`` (group size =
  product of the listed axes; a sub-axis is written ``'a':(pre)size``). jax 0.10 prints
  shard_map groups explicitly and GSPMD ones in the iota or mesh form with XLA's own axis
  names (``'axis_0'``...); jax 0.11 prints shard_map groups in the mesh form with the JAX
  mesh's axis names (``mesh['d'=8] {'d'}``). ``replica_group_list`` expands any spelling to
  device ids. ``collective-permute`` has ``source_target_pairs={{0,1},{1,2},...}`` instead,
  reported in the same field.
* A layer ``scan`` becomes a ``while`` whose ``body=%comp`` holds the per-layer collectives
  once; XLA records ``"known_trip_count":{"n":"4"}`` in the while's ``backend_config``.
* XLA:CPU promotes bf16 (and fp8) collectives to a wider type (bf16 -> f32, fp8 -> f16):
  the parser reports the bytes of the type that is actually moved; f16/s8/s16/s32/pred are
  moved as they are.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
         "ragged-all-to-all", "collective-broadcast")
_KIND_SET = frozenset(KINDS)

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_OPCODE = re.compile(r"\s*([a-z][a-z0-9\-]*)\(")
_COMMENT = re.compile(r"/\*.*?\*/")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_CALLS = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation|branch_computations|"
                    r"called_computations|select|scatter|comparator)=(\{[^}]*\}|%?[\w.\-]+)")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_IOTA_GROUPS = re.compile(r"\[[\d,]*\]<=\[[\d,]*\](?:T\([\d,]*\))?")
_MESH_GROUPS = re.compile(r"mesh\[[^\]]*\](?:,\s*device_ids=\((?:[^()]|\([^()]*\))*\))?\s*\{[^}]*\}")


def dtype_bits(dtype: str) -> int:
    """Bits per element of an HLO primitive type name (``f32``, ``bf16``, ``pred``, ``s4``, ``f8e4m3fn``...)."""
    dtype = dtype.lower()
    if dtype == "pred":
        return 8
    if dtype in ("token", "opaque", "tuple"):
        return 0
    if dtype == "bf16":
        return 16
    if dtype.startswith("c") and dtype[1:].isdigit():       # c64, c128
        return int(dtype[1:])
    m = re.fullmatch(r"f(\d+)e\d+m\d+\w*", dtype)            # f8e4m3fn, f8e5m2, f4e2m1fn, f8e8m0fnu
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"[suf](\d+)", dtype)                   # s8 s16 s32 s64 u.. f16 f32 f64 s4 u2
    if m:
        return int(m.group(1))
    raise ValueError(f"unknown HLO element type '{dtype}'")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string, summing over tuple elements (``(f32[2,3]{1,0}, s32[])`` -> 28)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        bits = dtype_bits(dtype)
        n = 1
        for d in dims.split(","):
            d = d.strip().lstrip("<=")                       # dynamic dims are printed as <=N
            if d:
                n *= int(d)
        total += (n * bits + 7) // 8
    return total


def _split_shape(rest: str) -> tuple[str, str]:
    """Split ``SHAPE opcode(...)...`` into the shape text and what follows."""
    rest = rest.lstrip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:]
        return rest, ""
    head, _, tail = rest.partition(" ")
    return head, " " + tail


def _balanced(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index one past the bracket closing the one at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] == open_ch
        depth -= text[i] == close_ch
        if depth == 0:
            return i + 1
    return len(text)


def _attr(text: str, key: str) -> str | None:
    """The raw value of ``key=`` in an instruction's attribute text (balanced braces kept)."""
    m = re.search(rf"(?<![\w-]){key}=", text)
    if not m:
        return None
    i = m.end()
    if text.startswith("mesh[", i):
        mm = _MESH_GROUPS.match(text, i)
        return mm.group(0) if mm else None
    if text.startswith("{", i):
        return text[i:_balanced(text, i, "{", "}")]
    if text.startswith("[", i):
        mm = _IOTA_GROUPS.match(text, i)
        if mm:
            return mm.group(0)
    mm = re.match(r"[^,\s]+", text[i:])
    return mm.group(0) if mm else None


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


def _ints(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"\d+", text)]


def replica_group_list(groups: str | None, n_devices: int) -> list[list[int]]:
    """Any ``replica_groups`` spelling expanded to explicit device-id lists, e.g.
    ``[2,4]<=[8]`` and ``mesh['a'=2,'b'=4] {'b'}`` -> ``[[0,1,2,3],[4,5,6,7]]``;
    ``{}`` -> one group of all ``n_devices``. (jax 0.10 prints shard_map groups explicitly,
    jax 0.11 in the mesh form: this makes them comparable.)"""
    g = (groups or "").strip()
    if not g or g in ("{}", "{{}}"):
        return [list(range(n_devices))]
    if g.startswith("{"):
        return [_ints(grp) for grp in re.findall(r"\{([\d,\s]*)\}", g[1:-1])]
    if g.startswith("["):
        m = re.fullmatch(r"\[([\d,]*)\]<=\[([\d,]*)\](?:T\(([\d,]*)\))?", g)
        if not m:
            raise ValueError(f"unrecognised iota replica groups '{g}'")
        return _iota(_ints(m.group(1)), _ints(m.group(2)), _ints(m.group(3) or "")).tolist()
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
                reshape = _ints(it.group(2) or it.group(1))
                dev = _iota(sizes, reshape, _ints(it.group(3) or "")).reshape(sizes)
            else:
                dev = np.asarray(_ints(spec)).reshape(sizes)
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


def _parse_module(hlo_text: str):
    """Computations, instructions and the module's device count from optimized HLO text."""
    if "HloModule" not in hlo_text and ("func.func" in hlo_text or "stablehlo." in hlo_text):
        raise ValueError("this is StableHLO (lowered.as_text()); pass the optimized HLO of "
                         "compiled.as_text() (jax.jit(f).lower(...).compile())")
    m = re.search(r"num_partitions=(\d+)", hlo_text)
    r = re.search(r"replica_count=(\d+)", hlo_text)
    n_devices = (int(m.group(1)) if m else 1) * (int(r.group(1)) if r else 1)
    comps: dict[str, list[dict]] = {}
    entry = None
    current = None
    for line in hlo_text.splitlines():
        line = _COMMENT.sub("", line)
        if not line.strip() or line.startswith("HloModule"):
            continue
        if not line[0].isspace() and line.rstrip().endswith("{"):
            header = line.split("(", 1)[0].split()
            is_entry = header and header[0] == "ENTRY"
            name = (header[1] if is_entry else header[0]).lstrip("%") if header else ""
            current = name
            comps[current] = []
            if is_entry:
                entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        mi = _INSTR.match(line)
        if current is None or not mi:
            continue
        shape, after = _split_shape(mi.group("rest"))
        mo = _OPCODE.match(after)
        if not mo:
            continue
        opcode = mo.group(1)
        open_at = mo.end() - 1
        close_at = _balanced(after, open_at, "(", ")")
        operands = [o.strip().split()[-1].lstrip("%") for o in _split_top(after[open_at + 1:close_at - 1])]
        attrs = after[close_at:]
        comps[current].append({"name": mi.group("name"), "shape": shape, "opcode": opcode,
                               "operands": operands, "attrs": attrs})
    if entry is None and comps:
        entry = list(comps)[-1]
    return comps, entry, n_devices


def _split_top(text: str) -> list[str]:
    """Split on commas at bracket depth 0."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return [o for o in out if o.strip()]


def _called(attrs: str, comps: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(attribute, computation) pairs an instruction calls."""
    out = []
    for key, val in _CALLS.findall(_QUOTED.sub('""', attrs)):
        for name in re.findall(r"%?([\w.\-]+)", val):
            if name in comps:
                out.append((key, name))
    return out


def _loop_context(comps, entry) -> dict[str, tuple[bool, int | None]]:
    """Computation -> (inside a while loop, product of the enclosing loops' known trip counts)."""
    ctx: dict[str, tuple[bool, int | None]] = {}
    stack = [(entry, False, 1)] if entry else []
    while stack:
        comp, in_loop, trips = stack.pop()
        old = ctx.get(comp)
        if old is not None and (old[0] or not in_loop):
            continue                                      # already seen with at least this much loop info
        ctx[comp] = (in_loop, trips)
        for ins in comps.get(comp, ()):
            for key, callee in _called(ins["attrs"], comps):
                if ins["opcode"] == "while" and key in ("body", "condition"):
                    t = _TRIP.search(ins["attrs"])
                    n = int(t.group(1)) if t else None
                    stack.append((callee, True, trips * n if (trips is not None and n is not None) else None))
                else:
                    stack.append((callee, in_loop, trips))
    return ctx


def collectives_by_op(hlo_text: str) -> list[dict]:
    """Every collective instruction of an optimized HLO module, in text order.

    Each entry: ``kind`` (one of KINDS), ``opcode`` (as printed, e.g. ``all-reduce-start``),
    ``name``, ``computation``, ``shape`` (result shape text; the ``-done``'s for async ops),
    ``bytes``, ``sent_bytes``, ``replica_groups`` (raw text; ``source_target_pairs`` for a
    collective-permute), ``group_size`` (devices per group; 2 for a permute's pairs), ``op_name`` (from ``metadata``, '' if absent),
    ``in_loop`` (inside a ``while`` body/condition, i.e. a ``scan``: executes once per
    iteration though it appears once) and ``trip_count`` (product of the enclosing loops'
    ``known_trip_count``; None when unknown, 1 outside loops).

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
    comps, entry, n_devices = _parse_module(hlo_text)
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
                wrapped.update(c for _, c in _called(ins["attrs"], comps))
    ctx = _loop_context(comps, entry)
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
            groups = _attr(attrs, "replica_groups")
            if kind == "collective-permute":
                groups = _attr(attrs, "source_target_pairs") or groups
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
            op_name = _OP_NAME.search(attrs)
            out.append({"kind": kind, "opcode": ins["opcode"], "name": ins["name"], "computation": comp,
                        "shape": result, "bytes": nbytes, "sent_bytes": _sent(kind, nbytes, n),
                        "replica_groups": groups or "", "group_size": n,
                        "op_name": op_name.group(1) if op_name else "",
                        "in_loop": in_loop, "trip_count": trips if in_loop else 1})
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


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------


def _array_dims(shape: str) -> tuple[int, ...]:
    """``f32[2048,256]{1,0}`` -> (2048, 256)."""
    return tuple(int(d) for d in _ARRAY.match(shape.lstrip()).group(2).split(",") if d)


def dots_by_op(hlo_text: str) -> list[dict]:
    """Every ``dot`` instruction of an optimized HLO module, in text order: the matrix products
    XLA runs, whether alone or as the root of a fusion.

    Each entry: ``name``, ``computation``, ``dtype`` (HLO element type, e.g. ``f32``), ``lhs`` and
    ``rhs`` (operand dims), ``lhs_batch``, ``lhs_contracting``, ``rhs_batch``, ``rhs_contracting``
    (tuples of dims, as ``lax.dot_general`` takes them), ``op_name``, ``in_loop`` and
    ``trip_count`` (as in ``collectives_by_op``: a dot of a scanned layer appears once).
    """
    comps, entry, _ = _parse_module(hlo_text)
    shapes = {ins["name"]: ins["shape"] for body in comps.values() for ins in body}
    ctx = _loop_context(comps, entry)
    out = []
    for comp, body in comps.items():
        in_loop, trips = ctx.get(comp, (False, 1))
        for ins in body:
            if ins["opcode"] != "dot":
                continue
            attrs = ins["attrs"]
            dims = {key: tuple(_ints(_attr(attrs, key) or "")) for key in
                    ("lhs_batch_dims", "lhs_contracting_dims", "rhs_batch_dims", "rhs_contracting_dims")}
            op_name = _OP_NAME.search(attrs)
            lhs, rhs = ins["operands"][:2]
            out.append({"name": ins["name"], "computation": comp, "dtype": _ARRAY.match(ins["shape"]).group(1),
                         "lhs": _array_dims(shapes[lhs]), "rhs": _array_dims(shapes[rhs]),
                         "lhs_batch": dims["lhs_batch_dims"], "lhs_contracting": dims["lhs_contracting_dims"],
                         "rhs_batch": dims["rhs_batch_dims"], "rhs_contracting": dims["rhs_contracting_dims"],
                         "op_name": op_name.group(1) if op_name else "",
                         "in_loop": in_loop, "trip_count": trips if in_loop else 1})
    return out
