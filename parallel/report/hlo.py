"""Optimized HLO text, parsed: computations, instructions, loop trip counts, element types;
and the matrix products (``dots_by_op``) with their operand shapes and dimension numbers.

Pure functions over ``compiled.as_text()``; ``collectives.py`` reads the collectives from the
same parse, and the shard report (``build.py``) is built on both.

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

import re
from typing import Any, Mapping

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


def attr(text: str, key: str) -> str | None:
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


def ints(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"\d+", text)]


def parse_module(hlo_text: str):
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


def called(attrs: str, comps: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(attribute, computation) pairs an instruction calls."""
    out = []
    for key, val in _CALLS.findall(_QUOTED.sub('""', attrs)):
        for name in re.findall(r"%?([\w.\-]+)", val):
            if name in comps:
                out.append((key, name))
    return out


def loop_context(comps, entry) -> dict[str, tuple[bool, int | None]]:
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
            for key, callee in called(ins["attrs"], comps):
                if ins["opcode"] == "while" and key in ("body", "condition"):
                    t = _TRIP.search(ins["attrs"])
                    n = int(t.group(1)) if t else None
                    stack.append((callee, True, trips * n if (trips is not None and n is not None) else None))
                else:
                    stack.append((callee, in_loop, trips))
    return ctx


def call_paths(comps, entry) -> dict[str, tuple]:
    """Computation -> the frames that enclose it, outermost first: ``("while", known trip count or
    None)`` for a loop body or condition, ``("branch", index, branches)`` for a conditional's branch
    (``lax.switch`` / ``lax.cond``: branch 1 of a cond is its true branch). The first path found
    where a computation is called from several places (what a per-tick count of a pipeline's
    ``lax.switch`` needs: ``parallel/pipeline/report.py``)."""
    paths: dict[str, tuple] = {}
    stack = [(entry, ())] if entry else []
    while stack:
        comp, path = stack.pop()
        if comp in paths:
            continue
        paths[comp] = path
        for ins in comps.get(comp, ()):
            calls = called(ins["attrs"], comps)
            if ins["opcode"] == "conditional":
                branches = [c for k, c in calls if k in ("branch_computations", "false_computation",
                                                          "true_computation")]
                if any(k == "true_computation" for k, _ in calls):   # (pred, true, false): false is branch 0
                    branches = [c for k, c in calls if k == "false_computation"] + \
                               [c for k, c in calls if k == "true_computation"]
                for i, callee in enumerate(branches):
                    stack.append((callee, path + (("branch", i, len(branches)),)))
                continue
            for key, callee in calls:
                if ins["opcode"] == "while" and key in ("body", "condition"):
                    t = _TRIP.search(ins["attrs"])
                    stack.append((callee, path + (("while", int(t.group(1)) if t else None),)))
                else:
                    stack.append((callee, path))
    return paths


def op_name(attrs: str) -> str:
    """An instruction's ``metadata`` ``op_name`` (JAX's name stack: named scopes, jvp, transpose); '' if absent."""
    m = _OP_NAME.search(attrs)
    return m.group(1) if m else ""


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
    comps, entry, _ = parse_module(hlo_text)
    shapes = {ins["name"]: ins["shape"] for body in comps.values() for ins in body}
    ctx = loop_context(comps, entry)
    out = []
    for comp, body in comps.items():
        in_loop, trips = ctx.get(comp, (False, 1))
        for ins in body:
            if ins["opcode"] != "dot":
                continue
            attrs = ins["attrs"]
            dims = {key: tuple(ints(attr(attrs, key) or "")) for key in
                    ("lhs_batch_dims", "lhs_contracting_dims", "rhs_batch_dims", "rhs_contracting_dims")}
            lhs, rhs = ins["operands"][:2]
            out.append({"name": ins["name"], "computation": comp, "dtype": _ARRAY.match(ins["shape"]).group(1),
                         "lhs": _array_dims(shapes[lhs]), "rhs": _array_dims(shapes[rhs]),
                         "lhs_batch": dims["lhs_batch_dims"], "lhs_contracting": dims["lhs_contracting_dims"],
                         "rhs_batch": dims["rhs_batch_dims"], "rhs_contracting": dims["rhs_contracting_dims"],
                         "op_name": op_name(attrs),
                         "in_loop": in_loop, "trip_count": trips if in_loop else 1})
    return out
