"""What a compiled program really does per device: collectives, memory, parameter bytes, ZeRO theory.

Pure functions over compiled programs (``jax.stages.Compiled``), their optimized HLO text
(``compiled.as_text()``) and pytrees of shapes / shardings. Nothing here prints except
``format_report`` (which returns a string) and ``plot_strategies`` (which writes a PNG).
Like the rest of ``parallel/`` it knows logical axis names, shardings and compiled programs,
never models.

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

import jax
import numpy as np

# ---------------------------------------------------------------------------------------
# HLO text parsing
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# Parameters and shardings
# ---------------------------------------------------------------------------------------

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
                     "bytes": full, "bytes_per_device": per,
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


# ---------------------------------------------------------------------------------------
# Theory
# ---------------------------------------------------------------------------------------

def zero_theory_bytes(n_params: int, stage: int, n_shards: int, param_bytes: int = 4, grad_bytes: int = 4,
                      opt_bytes_per_param: int = 8) -> dict:
    """Per-device model-state bytes under ZeRO (Rajbhandari et al. 2020, "ZeRO: Memory
    Optimizations Toward Training Trillion Parameter Models", §5), with Ψ = ``n_params``,
    N = ``n_shards`` (data-parallel degree), parameters of ``param_bytes``, gradients of
    ``grad_bytes`` and K = ``opt_bytes_per_param`` bytes of optimizer state per parameter:

    ========  ==============  ==============  ==============  =============================
    stage     params          grads           opt_state       paper (2-byte p, g)
    ========  ==============  ==============  ==============  =============================
    0 (DP)    p·Ψ             g·Ψ             K·Ψ             (2 + 2 + K)·Ψ
    1 P_os    p·Ψ             g·Ψ             K·Ψ/N           2Ψ + 2Ψ + K·Ψ/N
    2 P_os+g  p·Ψ             g·Ψ/N           K·Ψ/N           2Ψ + (2 + K)·Ψ/N
    3 P_os+g+p  p·Ψ/N         g·Ψ/N           K·Ψ/N           (2 + 2 + K)·Ψ/N
    ========  ==============  ==============  ==============  =============================

    K = 8 for Adam with f32 params (f32 m and v); K = 12 in the paper's mixed-precision setting
    (f32 master copy + m + v beside bf16/fp16 params and grads, p = g = 2). A sharded quantity
    takes ⌈Ψ/N⌉ elements per device. Activations and temporaries are not model state and are
    not included. Returns ``params``, ``grads``, ``opt_state`` and ``total`` in bytes.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    shard = -(-n_params // n_shards)
    out = {"params": (shard if stage >= 3 else n_params) * param_bytes,
           "grads": (shard if stage >= 2 else n_params) * grad_bytes,
           "opt_state": (shard if stage >= 1 else n_params) * opt_bytes_per_param}
    out["total"] = out["params"] + out["grads"] + out["opt_state"]
    return out


def comm_theory_bytes(param_bytes_total: int, stage: int, n: int) -> dict:
    """Bytes each device *sends* per training step for the data-parallel gradient / parameter
    traffic of ZeRO ``stage`` over ``n`` devices, with bandwidth-optimal (ring) collectives on
    P = ``param_bytes_total`` bytes of parameters (= gradient bytes): an all-gather or a
    reduce-scatter of P costs P·(n−1)/n per device, an all-reduce (= reduce-scatter +
    all-gather) 2·P·(n−1)/n (JAX scaling book; ZeRO paper §7):

    ========  ===================================================  ===============
    stage     collectives                                          total
    ========  ===================================================  ===============
    0 (DP)    all-reduce of the gradients                          2·P·(n−1)/n
    1, 2      reduce-scatter gradients + all-gather updated params  2·P·(n−1)/n
    3         all-gather params in forward and again in backward,  3·P·(n−1)/n
              reduce-scatter gradients
    ========  ===================================================  ===============

    Returns ``all-reduce``, ``reduce-scatter``, ``all-gather`` and ``total`` (ints, bytes).
    Compare with the ``sent_bytes`` of ``collectives``, which uses the same convention.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage}")
    one = param_bytes_total * (n - 1) // n if n > 1 else 0
    ar, rs, ag = (2 * one, 0, 0) if stage == 0 else (0, one, one) if stage in (1, 2) else (0, one, 2 * one)
    return {"all-reduce": ar, "reduce-scatter": rs, "all-gather": ag, "total": ar + rs + ag}


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def build_report(compiled=None, *, abstract_params=None, logical_specs=None, param_shardings=None,
                 opt_state=None, opt_shardings=None, mesh_shape: Mapping[str, int] | None = None,
                 stage: int | None = None, n_shards: int | None = None, param_bytes: int = 4,
                 grad_bytes: int = 4, opt_bytes_per_param: int = 8, trip_count: int | str | None = None,
                 threshold_bytes: int = 1 << 20, title: str = "") -> dict:
    """Everything ``format_report`` shows, as plain data; every argument is optional.

    ``mesh_shape``: {axis: size} (``mesh.shape``). ``n_shards`` (the N of the ZeRO formulas and
    the n of the communication theory) defaults to the ``fsdp`` axis size when it is > 1 (the
    axis ZeRO shards state over), else to all non-``tensor`` devices (the data-parallel degree).
    With tensor parallelism the theory is per tensor-parallel rank: Ψ/T parameters each. ``opt_state`` with
    ``opt_shardings`` (or leaves carrying ``.sharding``) gives the measured optimizer bytes.
    ``trip_count`` as in ``collectives`` (None: static counts, plus a per-execution view
    with XLA's known trip counts under ``collectives_executed``).
    """
    mesh_shape = dict(mesh_shape or {})
    n_devices = math.prod(mesh_shape.values()) if mesh_shape else None
    rep: dict[str, Any] = {"title": title, "mesh": mesh_shape, "n_devices": n_devices, "stage": stage}
    if abstract_params is not None:
        table = param_table(abstract_params, logical_specs, param_shardings)
        rep["params"] = table
        rep["n_params"] = sum(math.prod(r["shape"]) for r in table)
        rep["params_bytes"] = sum(r["bytes"] for r in table)
        rep["params_bytes_per_device"] = sum(r["bytes_per_device"] for r in table)
        rep["warnings"] = replicated_warnings(table, n_devices or 1, threshold_bytes)
    if opt_state is not None:
        rep["opt_state_bytes_per_device"] = tree_bytes_per_device(opt_state, opt_shardings)
    if compiled is not None:
        if isinstance(compiled, str):                      # HLO text alone: collectives, no memory
            text = compiled
        else:
            rep["memory"] = memory(compiled)
            text = compiled.as_text()
        ops = collectives_by_op(text)
        rep["collectives"] = summarize(scale_by_trip_count(ops, trip_count) if trip_count is not None else ops)
        rep["collectives_executed"] = summarize(scale_by_trip_count(ops, "auto"))
    if stage is not None and "n_params" in rep:
        tensor = mesh_shape.get("tensor", 1)
        n = n_shards or (mesh_shape["fsdp"] if mesh_shape.get("fsdp", 1) > 1
                         else max(1, (n_devices or 1) // tensor))
        rep["n_shards"] = n
        rep["memory_theory"] = zero_theory_bytes(-(-rep["n_params"] // tensor), stage, n, param_bytes,
                                                 grad_bytes, opt_bytes_per_param)
        rep["comm_theory"] = comm_theory_bytes(rep["n_params"] * grad_bytes // tensor, stage, n)
    return rep


def fmt_bytes(n: int | float | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_report(report: Mapping[str, Any]) -> str:
    """A text report of ``build_report``'s dict (every section optional): parameters (path,
    logical axes -> mesh spec, bytes per device), per-device memory beside ZeRO theory,
    collectives (kind, count, bytes, sent, groups) beside communication theory, warnings."""
    out: list[str] = []
    title = report.get("title") or "shard report"
    out.append(f"== {title} ==")
    mesh = report.get("mesh") or {}
    if mesh:
        line = "mesh: " + " × ".join(f"{a}={s}" for a, s in mesh.items()) + f"  ({report.get('n_devices')} devices)"
        if report.get("stage") is not None:
            line += f"   ZeRO stage {report['stage']} over {report.get('n_shards', '?')} shards"
        out.append(line)

    table = report.get("params")
    if table:
        out += ["", f"parameters: {len(table)} arrays, {report.get('n_params', 0):,} values, "
                    f"{fmt_bytes(report.get('params_bytes'))} in all"]
        rows = [(r["path"], "(" + ", ".join(str(a) for a in (r["logical"] or ())) + ")", r["spec"],
                 "×".join(map(str, r["shape"])) or "scalar", fmt_bytes(r["bytes_per_device"])) for r in table]
        rows.append(("total", "", "", "", fmt_bytes(report.get("params_bytes_per_device"))))
        out += _table(("path", "logical", "-> spec", "shape", "bytes/device"), rows, right=(4,))

    mem, theory = report.get("memory"), report.get("memory_theory")
    if mem or theory or report.get("params_bytes_per_device") is not None:
        out += ["", "memory per device" + (f" (theory: ZeRO-{report['stage']}, Ψ={report.get('n_params', 0):,}, "
                                             f"N={report.get('n_shards')})" if theory else "")]
        theory = theory or {}
        mem = mem or {}
        rows = [("params", fmt_bytes(report.get("params_bytes_per_device")), fmt_bytes(theory.get("params"))),
                ("grads", "-", fmt_bytes(theory.get("grads"))),
                ("opt_state", fmt_bytes(report.get("opt_state_bytes_per_device")), fmt_bytes(theory.get("opt_state"))),
                ("model state", "-", fmt_bytes(theory.get("total")))]
        rows += [(f"compiled {k}", fmt_bytes(mem.get(k)), "") for k in ("arguments", "outputs", "temp", "alias", "total")
                 if k in mem]
        out += _table(("", "measured", "theory"), rows, right=(1, 2))

    colls = report.get("collectives")
    if colls is not None:
        ctheory = report.get("comm_theory") or {}
        executed = {c["kind"]: c for c in report.get("collectives_executed") or ()}
        out += ["", "collectives (count/bytes per instruction as compiled; 'sent' = ring estimate of bytes each "
                    "device sends; 'per step' multiplies loop bodies by XLA's known trip counts)"]
        kinds = [c["kind"] for c in colls] + [k for k in ("all-reduce", "reduce-scatter", "all-gather")
                                              if ctheory.get(k) and k not in {c["kind"] for c in colls}]
        by_kind = {c["kind"]: c for c in colls}
        rows = []
        for k in kinds:
            c = by_kind.get(k, {"count": 0, "bytes": 0, "sent_bytes": 0, "replica_groups": [], "in_loop": 0})
            e = executed.get(k, c)
            groups = " ".join(c["replica_groups"])
            rows.append((k, f"{c['count']}" + (f" ({c['in_loop']} in loop)" if c["in_loop"] else ""),
                         fmt_bytes(c["bytes"]), fmt_bytes(c["sent_bytes"]), fmt_bytes(e["sent_bytes"]),
                         fmt_bytes(ctheory.get(k)) if ctheory else "-",
                         groups if len(groups) <= 60 else groups[:57] + "..."))
        if ctheory:
            rows.append(("total", "", fmt_bytes(sum(c["bytes"] for c in colls)),
                         fmt_bytes(sum(c["sent_bytes"] for c in colls)),
                         fmt_bytes(sum(e["sent_bytes"] for e in executed.values()) if executed else None),
                         fmt_bytes(ctheory.get("total")), ""))
        if rows:
            out += _table(("kind", "count", "bytes", "sent", "sent/step", "theory sent", "replica groups"), rows,
                          right=(2, 3, 4, 5))
        else:
            out.append("  none")

    warnings = report.get("warnings")
    if warnings:
        out += ["", "warnings:"] + [f"  - {w}" for w in warnings]
    return "\n".join(out) + "\n"


def plot_strategies(rows: Sequence[Mapping[str, Any]], path) -> str:
    """PNG comparing strategies: left, per-device memory (stacked ``params``, ``grads`` if given,
    ``opt_state``, ``temp``); right, communication bytes per device (``comm``, and
    ``comm_theory`` beside it when given). One bar group per ``name``. Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [str(r["name"]) for r in rows]
    x = np.arange(len(names))
    mib = float(1 << 20)
    fig, (ax_m, ax_c) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(names) + 4), 4.5))
    bottom = np.zeros(len(names))
    parts = [p for p in ("params", "grads", "opt_state", "temp") if any(r.get(p) for r in rows)]
    for part in parts:
        vals = np.array([float(r.get(part) or 0) / mib for r in rows])
        ax_m.bar(x, vals, 0.6, bottom=bottom, label=part)
        bottom += vals
    ax_m.set_xticks(x, names, rotation=20, ha="right")
    ax_m.set_ylabel("MiB per device")
    ax_m.set_title("memory per device")
    if parts:
        ax_m.legend()
    has_theory = any(r.get("comm_theory") is not None for r in rows)
    w = 0.38 if has_theory else 0.6
    ax_c.bar(x - (w / 2 if has_theory else 0), [float(r.get("comm") or 0) / mib for r in rows], w, label="compiled")
    if has_theory:
        ax_c.bar(x + w / 2, [float(r.get("comm_theory") or 0) / mib for r in rows], w, label="theory")
        ax_c.legend()
    ax_c.set_xticks(x, names, rotation=20, ha="right")
    ax_c.set_ylabel("MiB sent per device per step")
    ax_c.set_title("communication")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
