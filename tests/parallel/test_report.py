"""parallel/report/ on real programs compiled for the 8 emulated CPU devices (conftest.py)."""
import math

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from parallel.report import build, collectives, hlo, memory, plot, theory
from parallel.report import format as fmt

N = 8
RING = [(i, (i + 1) % N) for i in range(N)]


@pytest.fixture(scope="module")
def mesh():
    assert len(jax.devices()) == N
    return jax.make_mesh((N,), ("d",), axis_types=(AxisType.Auto,))


def _hlo(mesh, f, in_specs, out_specs, *args):
    fn = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False))
    return fn.lower(*args).compile().as_text()


ALL = [list(range(N))]


def _groups(entry):
    """Explicit device lists of an entry's replica groups: jax 0.10 prints shard_map groups as
    {{0,...}}, jax 0.11 as mesh['d'=8] {'d'}."""
    gs = entry["replica_groups"]
    return [collectives.replica_group_list(g, N) for g in (gs if isinstance(gs, list) else [gs])]


def _only(entries, kind):
    found = [e for e in entries if e["kind"] == kind]
    assert len(found) == 1, entries
    return found[0]


# --- collectives on shard_map programs ------------------------------------------------------

def test_psum_is_one_all_reduce_of_the_shard(mesh):
    text = _hlo(mesh, lambda a: jax.lax.psum(a, "d"), P("d"), P(), jnp.ones((N * 1024,), jnp.float32))
    (ar,) = collectives.collectives(text)
    assert ar["kind"] == "all-reduce" and ar["count"] == 1
    assert ar["bytes"] == 1024 * 4                           # f32[1024] per device
    assert ar["sent_bytes"] == 2 * 4096 * 7 // 8             # ring: 2·B·(n−1)/n
    assert _groups(ar) == [ALL]
    assert ar["in_loop"] == 0
    (op,) = collectives.collectives_by_op(text)
    assert op["opcode"] == "all-reduce" and op["group_size"] == N and not op["in_loop"]
    assert op["op_name"].endswith("psum")


@pytest.mark.parametrize("axis,groups", [("b", [[0, 1, 2, 3], [4, 5, 6, 7]]), ("a", [[0, 4], [1, 5], [2, 6], [3, 7]])])
def test_psum_over_one_axis_of_a_2d_mesh(axis, groups):
    mesh2 = jax.make_mesh((2, 4), ("a", "b"), axis_types=(AxisType.Auto,) * 2)
    out = P("a") if axis == "b" else P("b")
    text = _hlo(mesh2, lambda a: jax.lax.psum(a, axis), P(("a", "b")), out, jnp.ones((N * 256,), jnp.float32))
    (op,) = collectives.collectives_by_op(text)
    assert _groups(op) == [groups] and op["group_size"] == len(groups[0])
    assert op["bytes"] == 256 * 4


@pytest.mark.parametrize("name,f,in_spec,out_spec,kind,nbytes", [
    ("all_gather", lambda a: jax.lax.all_gather(a, "d", tiled=True), P("d"), P(), "all-gather", N * 1024 * 4),
    ("psum_scatter", lambda a: jax.lax.psum_scatter(a, "d", tiled=True), P(), P("d"), "reduce-scatter",
     N * 1024 * 4),
    ("all_to_all", lambda a: jax.lax.all_to_all(a.reshape(N, 128), "d", 0, 0, tiled=True), P("d"), P("d"),
     "all-to-all", 1024 * 4),
    ("ppermute", lambda a: jax.lax.ppermute(a, "d", RING), P("d"), P("d"), "collective-permute", 1024 * 4),
])
def test_each_collective_kind_and_its_bytes(mesh, name, f, in_spec, out_spec, kind, nbytes):
    text = _hlo(mesh, f, in_spec, out_spec, jnp.ones((N * 1024,), jnp.float32))
    entry = _only(collectives.collectives(text), kind)
    assert entry["count"] == 1 and entry["bytes"] == nbytes, (name, entry)
    if kind == "collective-permute":
        assert entry["replica_groups"] == ["{" + ",".join(f"{{{a},{b}}}" for a, b in RING) + "}"]
        assert entry["sent_bytes"] == nbytes
    else:
        assert _groups(entry) == [ALL]
        assert entry["sent_bytes"] == nbytes * 7 // 8


def test_two_byte_and_one_byte_types(mesh):
    # f16 and int8 collectives move as they are on XLA:CPU (2 and 1 bytes per element).
    text = _hlo(mesh, lambda a: jax.lax.all_gather(a, "d", tiled=True), P("d"), P(), jnp.ones((N * 1024,), jnp.float16))
    assert _only(collectives.collectives(text), "all-gather")["bytes"] == N * 1024 * 2
    text = _hlo(mesh, lambda a: jax.lax.psum(a, "d"), P("d"), P(), jnp.ones((N * 1024,), jnp.int8))
    assert _only(collectives.collectives(text), "all-reduce")["bytes"] == 1024
    text = _hlo(mesh, lambda a: jax.lax.all_gather(a > 0, "d", tiled=True), P("d"), P(), jnp.ones((N * 64,)))
    op = _only(collectives.collectives_by_op(text), "all-gather")
    assert op["shape"].startswith("pred[") and op["bytes"] == N * 64


def test_bf16_counts_two_bytes_per_element(mesh):
    # XLA:CPU widens bf16 collectives to f32 and the parser reports what really moves ...
    text = _hlo(mesh, lambda a: jax.lax.psum(a, "d"), P("d"), P(), jnp.ones((N * 1024,), jnp.bfloat16))
    op = _only(collectives.collectives_by_op(text), "all-reduce")
    assert op["bytes"] == 1024 * (2 if op["shape"].startswith("bf16") else 4)
    # ... a bf16 collective as GPU backends print it counts 2 bytes per element.
    assert hlo.shape_bytes("bf16[1024]{0}") == 2048
    assert hlo.shape_bytes("(bf16[4,8]{1,0}, f32[3]{0}, s32[], pred[2], /*index=4*/s8[5])") == 64 + 12 + 4 + 2 + 5
    assert hlo.shape_bytes("f8e4m3fn[16]") == 16 and hlo.shape_bytes("s4[16]") == 8 and hlo.shape_bytes("f64[2]") == 16
    assert hlo.shape_bytes("f32[<=10]") == 40 and hlo.shape_bytes("token[]") == 0


def test_scan_marks_collectives_in_loop(mesh):
    def f(a):
        def body(c, _):
            return jax.lax.psum(c, "d") * 0.5, None
        return jax.lax.scan(body, a, None, length=4)[0]
    text = _hlo(mesh, f, P("d"), P(), jnp.ones((N * 1024,), jnp.float32))
    (op,) = collectives.collectives_by_op(text)
    assert op["in_loop"] and op["trip_count"] == 4 and op["bytes"] == 4096
    (static,) = collectives.collectives(text)
    assert static["count"] == 1 and static["in_loop"] == 1 and static["bytes"] == 4096
    (auto,) = collectives.collectives(text, "auto")
    assert auto["count"] == 4 and auto["bytes"] == 4 * 4096
    (given,) = collectives.collectives(text, trip_count=12)
    assert given["count"] == 12 and given["bytes"] == 12 * 4096


# --- collectives on GSPMD (jit + NamedSharding) programs -------------------------------------

def test_gspmd_contracting_dim_sharded_matmul_reduces(mesh):
    x = jax.ShapeDtypeStruct((16, 1024), jnp.float32, sharding=NamedSharding(mesh, P(None, "d")))
    w = jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=NamedSharding(mesh, P("d", None)))
    text = jax.jit(lambda a, b: a @ b).lower(x, w).compile().as_text()
    kinds = {e["kind"]: e for e in collectives.collectives(text)}
    assert set(kinds) & {"all-reduce", "reduce-scatter"}, kinds
    if "all-reduce" in kinds:
        assert kinds["all-reduce"]["bytes"] == 16 * 256 * 4
    assert all(op["group_size"] == N for op in collectives.collectives_by_op(text))


def test_gspmd_fsdp_step_tuple_all_reduce_and_mesh_groups():
    mesh2 = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    ns = lambda *s: NamedSharding(mesh2, P(*s))  # noqa: E731
    w = {"a": jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=ns("fsdp", None)),
         "b": jax.ShapeDtypeStruct((128, 64), jnp.float32, sharding=ns("fsdp", None))}
    x = jax.ShapeDtypeStruct((32, 64), jnp.float32, sharding=ns(("data", "fsdp"), None))

    def step(w, x):
        g = jax.grad(lambda w: jnp.mean((jnp.tanh(x @ w["a"]) @ w["b"]) ** 2))(w)
        return jax.tree.map(lambda p, g: p - 0.1 * g, w, g)
    text = jax.jit(step, out_shardings={"a": ns("fsdp", None), "b": ns("fsdp", None)}).lower(w, x).compile().as_text()
    ops = collectives.collectives_by_op(text)
    gathers = [op for op in ops if op["kind"] == "all-gather" and op["bytes"] == 64 * 128 * 4]
    assert len(gathers) >= 2                                                   # full a and b, over fsdp
    assert all(op["group_size"] == 4 and _groups(op) == [[[0, 1, 2, 3], [4, 5, 6, 7]]] for op in gathers)
    for op in ops:
        assert op["group_size"] in (2, 4, 8) and op["replica_groups"]
        assert op["bytes"] == hlo.shape_bytes(op["shape"]) or op["kind"] == "reduce-scatter"


# --- replica group spellings and async forms (as GPU backends print them) ---------------------

@pytest.mark.parametrize("groups,n", [
    ("{{0,1,2,3},{4,5,6,7}}", 4), ("{{0,4},{1,5},{2,6},{3,7}}", 2), ("{}", 8), ("[2,4]<=[8]", 4),
    ("[4,2]<=[2,4]T(1,0)", 2), ("[1,8]<=[8]", 8), ("mesh['axis_0'=1,'axis_1'=8] {'axis_1'}", 8),
    ("mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}", 4),
    ("mesh['a'=8] {'a':(1)2}", 2), ("mesh['x'=2,'y'=4] {'x','y'}", 8),
])
def test_group_size(groups, n):
    assert collectives.group_size(groups, 8) == n
    expanded = collectives.replica_group_list(groups, 8)
    assert {len(g) for g in expanded} == {n} and sorted(d for g in expanded for d in g) == list(range(8))


@pytest.mark.parametrize("a,b", [
    # jax 0.10 GSPMD spelling vs jax 0.11's for the same fsdp / data groups of a (data=2, fsdp=4) mesh
    ("mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}", "mesh['axis_0'=2,'axis_1'=4] {'axis_1'}"),
    ("mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_2'}", "mesh['axis_0'=2,'axis_1'=4] {'axis_0'}"),
    ("{{0,1,2,3},{4,5,6,7}}", "[2,4]<=[8]"), ("{{0,4},{1,5},{2,6},{3,7}}", "[4,2]<=[2,4]T(1,0)"),
    ("{{0,4},{1,5},{2,6},{3,7}}", "mesh['a'=8] {'a':(1)2}"), ("{{0,1},{2,3},{4,5},{6,7}}", "mesh['a'=8] {'a':(4)2}"),
    ("{{0,1,2,3,4,5,6,7}}", "{}"),
])
def test_replica_group_spellings_agree(a, b):
    assert collectives.replica_group_list(a, 8) == collectives.replica_group_list(b, 8)


GPU_STYLE = """HloModule jit_step, is_scheduled=true, num_partitions=8

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.1 = f32[] add(%x, %y)
}

%a2a_computation (p0: f32[8,128]) -> f32[8,128] {
  %p0 = f32[8,128]{1,0} parameter(0)
  ROOT %all-to-all.9 = f32[8,128]{1,0} all-to-all(%p0), channel_id=6, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
}

%body (bp: (s32[], bf16[512])) -> (s32[], bf16[512]) {
  %bp = (s32[], bf16[512]{0}) parameter(0)
  %bx = bf16[512]{0} get-tuple-element(%bp), index=1
  %cp-start = (bf16[512]{0}, bf16[512]{0}, u32[], u32[]) collective-permute-start(%bx), channel_id=3, source_target_pairs={{0,1},{1,2},{2,3},{3,4},{4,5},{5,6},{6,7},{7,0}}
  %cp-done = bf16[512]{0} collective-permute-done(%cp-start)
  %bi = s32[] get-tuple-element(%bp), index=0
  ROOT %bt = (s32[], bf16[512]{0}) tuple(%bi, %cp-done)
}

%cond (cp: (s32[], bf16[512])) -> pred[] {
  %cp = (s32[], bf16[512]{0}) parameter(0)
  %ci = s32[] get-tuple-element(%cp), index=0
  %lim = s32[] constant(6)
  ROOT %lt = pred[] compare(%ci, %lim), direction=LT
}

ENTRY %main (p: f32[1024], q: bf16[2048], r: f32[8192], s: f32[8,128], t: (s32[], bf16[512])) -> f32[8192] {
  %p = f32[1024]{0} parameter(0)
  %q = bf16[2048]{0} parameter(1)
  %r = f32[8192]{0} parameter(2)
  %s = f32[8,128]{1,0} parameter(3)
  %t = (s32[], bf16[512]{0}) parameter(4)
  %all-reduce-start = (f32[1024]{0}, bf16[2048]{0}) all-reduce-start(%p, %q), channel_id=1, replica_groups=[1,8]<=[8], use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(step)/psum"}, backend_config={"operation_queue_id":"0","collective_backend_config":{"is_sync":false}}
  %all-reduce-done = (f32[1024]{0}, bf16[2048]{0}) all-reduce-done(%all-reduce-start)
  %gte = f32[1024]{0} get-tuple-element(%all-reduce-done), index=0
  %all-gather-start = (f32[1024]{0}, f32[8192]{0}) all-gather-start(%gte), channel_id=2, replica_groups=[2,4]<=[8], dimensions={0}, use_global_device_ids=true
  %all-gather-done = f32[8192]{0} all-gather-done(%all-gather-start)
  %reduce-scatter-start = ((f32[8192]{0}), f32[1024]{0}) reduce-scatter-start(%r), channel_id=4, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, to_apply=%add
  %reduce-scatter-update = ((f32[8192]{0}), f32[1024]{0}) reduce-scatter-update(%reduce-scatter-start)
  %reduce-scatter-done = f32[1024]{0} reduce-scatter-done(%reduce-scatter-update)
  %async-start = ((f32[8,128]{1,0}), f32[8,128]{1,0}, s32[]) async-start(%s), calls=%a2a_computation
  %async-done = f32[8,128]{1,0} async-done(%async-start)
  %ag2-start = (f32[1024]{0}, f32[2048]{0}) all-gather-start(f32[1024]{0} %gte), channel_id=7, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %w = (s32[], bf16[512]{0}) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"6"}}
  ROOT %out = f32[8192]{0} copy(%all-gather-done)
}
"""


def test_async_start_done_pairs_counted_once():
    all_ops = collectives.collectives_by_op(GPU_STYLE)
    assert [op["opcode"] for op in all_ops].count("all-gather-start") == 2
    unpaired = [op for op in all_ops if op["name"] == "ag2-start"][0]        # no -done: result - operand
    assert unpaired["bytes"] == 2048 * 4 and unpaired["group_size"] == 2
    ops = {op["kind"]: op for op in all_ops if op["name"] != "ag2-start"}
    assert sorted(ops) == sorted(["all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"])
    assert ops["all-reduce"]["opcode"] == "all-reduce-start"
    assert ops["all-reduce"]["bytes"] == 1024 * 4 + 2048 * 2          # tuple: f32 + bf16 operands
    assert ops["all-reduce"]["op_name"] == "jit(step)/psum" and ops["all-reduce"]["replica_groups"] == "[1,8]<=[8]"
    assert ops["all-gather"]["bytes"] == 8192 * 4 and ops["all-gather"]["group_size"] == 4
    assert ops["reduce-scatter"]["bytes"] == 8192 * 4                  # input, not the scattered output
    assert ops["all-to-all"]["bytes"] == 8 * 128 * 4 and ops["all-to-all"]["opcode"] == "all-to-all"
    cp = ops["collective-permute"]
    assert cp["bytes"] == 512 * 2 and cp["in_loop"] and cp["trip_count"] == 6
    assert not any(op["in_loop"] for k, op in ops.items() if k != "collective-permute")
    summary = {e["kind"]: e for e in collectives.collectives(GPU_STYLE, "auto")}
    assert summary["collective-permute"]["count"] == 6 and summary["all-reduce"]["count"] == 1
    assert summary["all-gather"]["count"] == 2 and summary["all-gather"]["bytes"] == 8192 * 4 + 2048 * 4


def test_stablehlo_is_rejected_with_a_hint():
    with pytest.raises(ValueError, match="compiled.as_text"):
        collectives.collectives(jax.jit(lambda a: a + 1).lower(1.0).as_text())


# --- memory -----------------------------------------------------------------------------------

def test_memory_of_sharded_vs_replicated_argument(mesh):
    x = jnp.ones((N, 1024), jnp.float32)
    f = jax.jit(lambda a: a * 2)
    sharded = memory.memory(f.lower(jax.device_put(x, NamedSharding(mesh, P("d")))).compile())
    replicated = memory.memory(f.lower(jax.device_put(x, NamedSharding(mesh, P()))).compile())
    assert sharded["arguments"] == 1024 * 4 and replicated["arguments"] == N * 1024 * 4
    assert sharded["total"] == sharded["arguments"] + sharded["outputs"] + sharded["temp"] - sharded["alias"]
    donated = memory.memory(jax.jit(lambda a: a * 2, donate_argnums=0).lower(
        jax.device_put(x, NamedSharding(mesh, P("d")))).compile())
    assert donated["alias"] == 1024 * 4 and donated["total"] == donated["arguments"] + donated["temp"]


def test_memory_without_analysis():
    class NoAnalysis:
        def memory_analysis(self):
            return None
    m = memory.memory(NoAnalysis())
    assert m["available"] is False and m["total"] is None and m["arguments"] is None

    class Partial:
        argument_size_in_bytes = 10
        temp_size_in_bytes = 5
    m = memory.memory(Partial())
    assert m["arguments"] == 10 and m["outputs"] is None and m["total"] == 15


# --- parameters -------------------------------------------------------------------------------

def test_param_table_and_tree_bytes(mesh):
    params = {"blocks": {"attn": {"query": {"kernel": jax.ShapeDtypeStruct((64, 512), jnp.float32)}},
                         "ln": {"scale": jax.ShapeDtypeStruct((512,), jnp.float32)}}}
    logical = {"blocks": {"attn": {"query": {"kernel": P("embed", "heads")}}, "ln": {"scale": P("embed")}}}
    shardings = {"blocks": {"attn": {"query": {"kernel": NamedSharding(mesh, P("d", None))}},
                            "ln": {"scale": NamedSharding(mesh, P())}}}
    rows = {r["path"]: r for r in memory.param_table(params, logical, shardings)}
    q, ln = rows["blocks/attn/query/kernel"], rows["blocks/ln/scale"]
    assert q["logical"] == ("embed", "heads") and "'d'" in q["spec"] and q["shape"] == (64, 512)
    assert q["bytes"] == 64 * 512 * 4 and q["bytes_per_device"] == 64 * 512 * 4 // N and not q["replicated"]
    assert ln["bytes_per_device"] == ln["bytes"] == 512 * 4 and ln["replicated"]
    assert memory.tree_bytes_per_device(params, shardings) == 64 * 512 * 4 // N + 512 * 4
    with_sharding = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), params, shardings)
    assert memory.tree_bytes_per_device(with_sharding) == 64 * 512 * 4 // N + 512 * 4

    table = memory.param_table(params, logical, {"blocks": {"attn": {"query": {"kernel": NamedSharding(mesh, P())}},
                                                       "ln": {"scale": NamedSharding(mesh, P())}}})
    warn = memory.replicated_warnings(table, N, threshold_bytes=64 * 1024)
    assert len(warn) == 1 and warn[0].startswith("blocks/attn/query/kernel")
    assert memory.replicated_warnings(table, 1, threshold_bytes=0) == []
    assert len(memory.replicated_warnings(table, N, threshold_bytes=0)) == 2


# --- theory -----------------------------------------------------------------------------------

def test_zero_theory_bytes_psi_1e6_n8():
    psi = 1_000_000
    assert theory.zero_theory_bytes(psi, 0, 8) == {"params": 4_000_000, "grads": 4_000_000, "opt_state": 8_000_000,
                                              "total": 16_000_000}
    assert theory.zero_theory_bytes(psi, 1, 8) == {"params": 4_000_000, "grads": 4_000_000, "opt_state": 1_000_000,
                                              "total": 9_000_000}
    assert theory.zero_theory_bytes(psi, 2, 8) == {"params": 4_000_000, "grads": 500_000, "opt_state": 1_000_000,
                                              "total": 5_500_000}
    assert theory.zero_theory_bytes(psi, 3, 8) == {"params": 500_000, "grads": 500_000, "opt_state": 1_000_000,
                                              "total": 2_000_000}
    # the paper's mixed-precision setting: 2-byte params and grads, K = 12 -> (2 + 2 + 12)Ψ = 16Ψ at stage 0
    assert theory.zero_theory_bytes(psi, 0, 8, 2, 2, 12)["total"] == 16 * psi
    assert theory.zero_theory_bytes(psi, 3, 8, 2, 2, 12)["total"] == 16 * psi // 8
    with pytest.raises(ValueError):
        theory.zero_theory_bytes(psi, 4, 8)


def test_comm_theory_bytes():
    p = 4_000_000
    dp = theory.comm_theory_bytes(p, 0, 8)
    assert dp["all-reduce"] == dp["total"] == 2 * p * 7 // 8 == 7_000_000
    z2 = theory.comm_theory_bytes(p, 2, 8)
    assert z2["reduce-scatter"] == z2["all-gather"] == 3_500_000 and z2["total"] == dp["total"]
    z3 = theory.comm_theory_bytes(p, 3, 8)
    assert z3["all-gather"] == 7_000_000 and z3["reduce-scatter"] == 3_500_000 and z3["total"] == 10_500_000
    assert theory.comm_theory_bytes(p, 3, 1)["total"] == 0


# --- report and plot --------------------------------------------------------------------------

def test_build_and_format_report_and_plot(mesh, tmp_path):
    params = {"w": jax.ShapeDtypeStruct((1024, 512), jnp.float32, sharding=NamedSharding(mesh, P("d", None))),
              "big": jax.ShapeDtypeStruct((1024, 512), jnp.float32, sharding=NamedSharding(mesh, P()))}
    x = jax.ShapeDtypeStruct((16, 1024), jnp.float32, sharding=NamedSharding(mesh, P(None, "d")))
    compiled = jax.jit(lambda p, x: x @ p["w"] + (x @ p["big"])).lower(params, x).compile()
    rep = build.build_report(build.ReportInputs(
        compiled, abstract_params=params, logical_specs={"w": P("embed", None), "big": P(None, None)},
        mesh_shape={"data": N, "fsdp": 1, "tensor": 1}, stage=3, title="toy"))
    assert rep["n_params"] == 2 * 1024 * 512 and rep["memory"]["arguments"] > 0
    assert rep["memory_theory"] == theory.zero_theory_bytes(2 * 1024 * 512, 3, N)
    assert any(w.startswith("big") for w in rep["warnings"])
    text = fmt.format_report(rep)
    for needle in ("toy", "embed", "all-reduce", "theory", "warnings", "big"):
        assert needle in text
    assert len(text.splitlines()) > 15

    path = plot.plot_strategies([
        {"name": "dp", "params": 4e6, "opt_state": 8e6, "temp": 1e6, "comm": 7e6, "comm_theory": 7e6},
        {"name": "zero3", "params": 5e5, "grads": 5e5, "opt_state": 1e6, "temp": 2e6, "comm": 1.1e7,
         "comm_theory": 1.05e7}], tmp_path / "strategies.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_fmt_bytes():
    assert fmt.fmt_bytes(512) == "512 B" and fmt.fmt_bytes(1536) == "1.5 KiB" and fmt.fmt_bytes(None) == "-"
    assert fmt.fmt_bytes(3 * 2 ** 30) == "3.0 GiB"
    assert math.isclose(float(fmt.fmt_bytes(2.5 * 2 ** 20).split()[0]), 2.5)
