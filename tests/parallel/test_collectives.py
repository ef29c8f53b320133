"""The papers' claims for the explicit form, on 8 emulated CPU devices.

Every step runs inside ``jax.shard_map(check_vma=False)`` with ``jax.grad`` taken inside the
body, so the only collectives are those of ``parallel.collectives``; we count them in the
compiled HLO (lines ``%x = f32[..] all-reduce(...)``; ``-start`` forms are counted too).
The two ``check_vma_true`` tests show what JAX's typed mode does instead.
"""
from __future__ import annotations

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from parallel.collectives import (dp_mean_grads, expert_dispatch, expert_return, megatron_f, megatron_g, sp_gather,
                                  sp_scatter, vocab_parallel_cross_entropy, vocab_parallel_embed, zero3_gather)
from parallel.report.collectives import collectives_by_op

B, T, D, H, K, F = 2, 16, 32, 8, 4, 64  # batch, time, model, heads, head dim, feed-forward
OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (.*?) (" + "|".join(OPS) + r")(?:-start)?\(")


def mesh_of(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def collectives(text: str) -> list[tuple[str, str, str]]:
    """(computation, op, result type) for every collective instruction in compiled HLO text."""
    found, comp = [], None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            comp = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
        elif m := _INSTR.match(line):
            found.append((comp, m.group(2), m.group(1)))
    return found


def counts(text: str) -> Counter:
    return Counter(op for _, op, _ in collectives(text))


def rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def assert_close(got, want, tol=1e-5):
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        w = dict(jax.tree_util.tree_leaves_with_path(want))[path]
        assert rel(g, w) <= tol, (jax.tree_util.keystr(path), rel(g, w))


# --- the blocks: one body, full or sharded weights --------------------------------------------

def init():
    k = jax.random.split(jax.random.key(0), 8)
    p = {n: jax.random.normal(k[i], s) * 0.2 for i, (n, s) in enumerate(
        [("wq", (D, H, K)), ("wk", (D, H, K)), ("wv", (D, H, K)), ("wo", (H, K, D)),
         ("w1", (D, F)), ("w2", (F, D))])}
    x = jax.random.normal(k[6], (B, T, D))
    return p, x, jnp.cos(jnp.arange(B * T * D, dtype=jnp.float32)).reshape(B, T, D)


def pspec_of(ax):
    """Megatron: q/k/v and W1 column-parallel (heads, F split), Wo and W2 row-parallel."""
    return {"wq": P(None, ax), "wk": P(None, ax), "wv": P(None, ax), "wo": P(ax),
            "w1": P(None, ax), "w2": P(ax)}


def attention(p, h):  # h[B, T, D] · W[D, H_n, K] → causal softmax → · Wo[H_n, K, D] (partial sum)
    q, k, v = (jnp.einsum("btd,dhk->bthk", h, p[w]) for w in ("wq", "wk", "wv"))
    s = jnp.einsum("bthk,bshk->bhts", q, k) / jnp.sqrt(K)
    s = jnp.where(jnp.tril(jnp.ones((h.shape[1],) * 2, bool)), s, -1e30)
    return jnp.einsum("bhts,bshk,hkd->btd", jax.nn.softmax(s, axis=-1), v, p["wo"])


def mlp(p, h):  # h[B, T, D] · W1[D, F_n] → GELU → · W2[F_n, D] (partial sum)
    return jax.nn.gelu(h @ p["w1"]) @ p["w2"]


BLOCKS = {"mlp": (mlp, ("w1", "w2")), "attention": (attention, ("wq", "wk", "wv", "wo"))}


def megatron(block, ax):
    return lambda p, x: megatron_g(block(p, megatron_f(x, ax)), ax)


def layer(p, x, wrap=lambda blk: blk):
    y = x + wrap(attention)(p, x)
    return y + wrap(mlp)(p, y)


def megatron_layer(p, x):
    return layer(p, x, lambda blk: megatron(blk, "tensor"))


def sq_loss(fn):
    return lambda p, x, c: jnp.sum(fn(p, x) ** 2 * c)


# --- Megatron-LM --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "attention"])
def test_megatron_block_equals_single_device_in_value_and_gradients(name):
    """Shoeybi et al. §3: f before the column-parallel and g after the row-parallel matmul make
    the split block the same function; here on a (data 2, tensor 4) mesh with DP's gradient mean."""
    mesh, (block, names) = mesh_of((2, 4), ("data", "tensor")), BLOCKS[name]
    (p, x, c), spec = init(), {n: pspec_of("tensor")[n] for n in names}
    p = {n: p[n] for n in names}

    def step(p, x, c):
        (y, (gp, gx)) = jax.value_and_grad(sq_loss(megatron(block, "tensor")), (0, 1))(p, x, c)
        return y[None], dp_mean_grads(gp, "data"), gx / 2

    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(spec, P("data"), P("data")),
                                    out_specs=(P("data"), spec, P("data")), check_vma=False))
    y, gp, gx = sharded(p, x, c)
    ref = lambda p, x: sq_loss(block)(p, x, c) / 2  # global loss: mean over the 2 data shards
    want_gp, want_gx = jax.grad(ref, (0, 1))(p, x)
    assert rel(y.sum() / 2, ref(p, x)) <= 1e-5
    assert_close(gp, want_gp)
    assert rel(gx, want_gx) <= 1e-5


def test_megatron_layer_two_all_reduces_forward_four_with_backward():
    """Shoeybi et al. §3, Fig. 4: a transformer layer (attention + MLP) communicates with two
    all-reduces forward and two backward. 8-way tensor parallel; the scalar loss is computed
    redundantly on every device, so it adds no reduction of its own."""
    mesh, (p, x, c) = mesh_of((8,), ("tensor",)), init()
    sm = lambda fn, out: jax.shard_map(fn, mesh=mesh, in_specs=(pspec_of("tensor"), P(), P()),
                                       out_specs=out, check_vma=False)
    fwd = sm(lambda p, x, c: megatron_layer(p, x), P())
    step = sm(jax.value_and_grad(sq_loss(megatron_layer), (0, 1)), (P(), (pspec_of("tensor"), P())))
    assert counts(hlo(fwd, p, x, c)) == {"all-reduce": 2}
    assert counts(hlo(step, p, x, c)) == {"all-reduce": 4}
    loss, (gp, gx) = jax.jit(step)(p, x, c)
    want_loss, (want_gp, want_gx) = jax.value_and_grad(sq_loss(layer), (0, 1))(p, x, c)
    assert rel(loss, want_loss) <= 1e-5 and rel(gx, want_gx) <= 1e-5
    assert_close(gp, want_gp)


def test_check_vma_true_gives_the_same_budget_with_the_gradient_outside():
    """With check_vma=True JAX types replicated vs varying values; f/g's free pcasts keep the
    types right, so jax.grad may also be taken outside shard_map: same 4 all-reduces."""
    mesh, (p, x, c) = mesh_of((8,), ("tensor",)), init()
    fwd = jax.shard_map(megatron_layer, mesh=mesh,
                        in_specs=(pspec_of("tensor"), P()), out_specs=P(), check_vma=True)
    grad = jax.grad(sq_loss(fwd), (0, 1))
    assert counts(hlo(fwd, p, x)) == {"all-reduce": 2}
    assert counts(hlo(grad, p, x, c)) == {"all-reduce": 4}
    got, want = jax.jit(grad)(p, x, c), jax.grad(sq_loss(layer), (0, 1))(p, x, c)
    assert_close(got[0], want[0])
    assert rel(got[1], want[1]) <= 1e-5


# --- Megatron sequence parallel ---------------------------------------------------------------

def test_sequence_parallel_layer_gathers_and_scatters_with_no_all_reduce():
    """Korthikanti et al. §4.2.2: g → all-gather, ḡ → reduce-scatter on the sequence axis; the
    same layer function, with 2+2 collectives forward, 4+4 forward+backward, 0 all-reduces."""
    mesh, (p, x, c) = mesh_of((8,), ("tensor",)), init()
    sp = lambda blk: lambda p, x: sp_scatter(blk(p, sp_gather(x, "tensor", 1)), "tensor", 1)
    x_spec = P(None, "tensor")  # X[B, T_n, D]: the residual stream stays sequence-sharded
    fwd = jax.shard_map(lambda p, x: layer(p, x, sp), mesh=mesh, in_specs=(pspec_of("tensor"), x_spec),
                        out_specs=x_spec, check_vma=False)

    def step(p, x, c):
        loss, g = jax.value_and_grad(sq_loss(lambda p, x: layer(p, x, sp)), (0, 1))(p, x, c)
        return loss[None], g  # this device's share of the loss, left unreduced

    step = jax.shard_map(step, mesh=mesh, in_specs=(pspec_of("tensor"), x_spec, x_spec),
                         out_specs=(P("tensor"), (pspec_of("tensor"), x_spec)), check_vma=False)
    assert counts(hlo(fwd, p, x)) == {"all-gather": 2, "reduce-scatter": 2}
    assert counts(hlo(step, p, x, c)) == {"all-gather": 4, "reduce-scatter": 4}
    assert rel(jax.jit(fwd)(p, x), layer(p, x)) <= 1e-5
    loss, (gp, gx) = jax.jit(step)(p, x, c)
    want_loss, (want_gp, want_gx) = jax.value_and_grad(sq_loss(layer), (0, 1))(p, x, c)
    assert rel(loss.sum(), want_loss) <= 1e-5 and rel(gx, want_gx) <= 1e-5
    assert_close(gp, want_gp)


# --- ZeRO-3 / FSDP ------------------------------------------------------------------------------

def test_zero3_gathers_each_layer_in_the_scan_and_keeps_a_gradient_shard():
    """Rajbhandari et al. §5.3: parameters all-gathered per layer forward and again backward,
    gradients reduce-scattered; each of 8 devices holds 1/8 of every gradient."""
    mesh, L = mesh_of((8,), ("fsdp",)), 2
    w = jax.random.normal(jax.random.key(1), (L, D, D)) * 0.2  # W[L, D_n, D] at rest
    x = jax.random.normal(jax.random.key(2), (B * 8, D))  # batch sharded over the same axis

    def net(w, x, gather=lambda w: w):
        blk = jax.checkpoint(lambda h, wl: (h + jax.nn.gelu(h @ gather(wl)), None))  # gather anew
        return jax.lax.scan(blk, x, w)[0]

    loss = lambda w, x, gather=lambda w: w: jnp.sum(jnp.sin(net(w, x, gather)))
    gather = lambda wl: zero3_gather(wl, "fsdp", 0)
    sm = lambda fn, out: jax.shard_map(fn, mesh=mesh, in_specs=(P(None, "fsdp"), P("fsdp")),
                                       out_specs=out, check_vma=False)
    fwd = sm(lambda w, x: net(w, x, gather), P("fsdp"))
    step = sm(lambda w, x: jax.grad(loss)(w, x, gather), P(None, "fsdp"))

    def per_loop(text):  # {while body: sorted collectives}, and none outside the loops
        bodies = set(re.findall(r"body=%?([\w.\-]+)", text))
        assert all(comp in bodies for comp, _, _ in collectives(text))
        return sorted(sorted(op for comp, op, _ in collectives(text) if comp == b) for b in bodies)

    assert per_loop(hlo(fwd, w, x)) == [["all-gather"]]
    assert per_loop(hlo(step, w, x)) == [["all-gather"], ["all-gather", "reduce-scatter"]]
    g = jax.jit(step)(w, x)
    assert rel(g, jax.grad(loss)(w, x)) <= 1e-5
    assert {s.data.shape for s in g.addressable_shards} == {(L, D // 8, D)}


# --- data parallel ------------------------------------------------------------------------------

def test_dp_mean_grads_is_the_mean_and_moves_the_parameter_bytes_once():
    """Data parallel: the averaged gradient is the mean of the 8 per-device gradients; in the
    flattened form one all-reduce carries exactly the parameter bytes."""
    mesh = mesh_of((8,), ("data",))
    p = {"w": jnp.ones((D, F)) * 0.1, "b": jnp.zeros((F,)), "v": jnp.ones((F, 3)) * 0.1}
    x = jax.random.normal(jax.random.key(3), (8 * 4, D))
    local_grad = jax.grad(lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) @ p["v"]))

    def step(p, x, flat):
        g = local_grad(p, x)
        return jax.tree.map(lambda a: a[None], g), dp_mean_grads(g, "data", flat=flat)

    for flat in (True, False):
        sm = jax.shard_map(lambda p, x: step(p, x, flat), mesh=mesh, in_specs=(P(), P("data")),
                           out_specs=(P("data"), P()), check_vma=False)
        each, mean = jax.jit(sm)(p, x)
        assert_close(mean, jax.tree.map(lambda a: a.mean(0), each), tol=1e-6)
    mean_only = jax.shard_map(lambda p, x: step(p, x, True)[1], mesh=mesh, in_specs=(P(), P("data")),
                              out_specs=P(), check_vma=False)
    reduces = [ty for _, op, ty in collectives(hlo(mean_only, p, x)) if op == "all-reduce"]
    sizes = [int(np.prod([int(d) for d in s.split(",") if d])) * 4
             for ty in reduces for s in re.findall(r"f32\[([\d,]*)\]", ty)]
    assert len(reduces) == 1 and sum(sizes) == sum(a.nbytes for a in jax.tree.leaves(p))


# --- vocab-parallel embedding and cross-entropy -----------------------------------------------

def test_vocab_parallel_embedding_and_cross_entropy_equal_unsharded_without_full_logits():
    """Megatron §3: embedding and softmax split over the vocabulary agree with the unsharded
    model in value and gradient, and no device holds the [B, T, V] logits."""
    V, mesh = 64, mesh_of((8,), ("tensor",))
    k = jax.random.split(jax.random.key(4), 4)
    tokens, targets = (jax.random.randint(k[i], (B, T), 0, V) for i in (0, 1))
    p = {"embed": jax.random.normal(k[2], (V, D)), "unembed": jax.random.normal(k[3], (D, V)) * 0.2}
    spec = {"embed": P("tensor"), "unembed": P(None, "tensor")}

    def ref(p):
        logits = jnp.tanh(p["embed"][tokens]) @ p["unembed"]  # [B, T, V]
        z_y = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - z_y)

    def local(p, tokens, targets):
        h = jnp.tanh(vocab_parallel_embed(tokens, p["embed"], "tensor"))
        logits = megatron_f(h, "tensor") @ p["unembed"]  # column-parallel: [B, T, V_n]
        return jnp.mean(vocab_parallel_cross_entropy(logits, targets, "tensor"))

    sharded = jax.shard_map(jax.value_and_grad(local), mesh=mesh, in_specs=(spec, P(), P()),
                            out_specs=(P(), spec), check_vma=False)
    loss, g = jax.jit(sharded)(p, tokens, targets)
    want_loss, want_g = jax.value_and_grad(ref)(p)
    assert rel(loss, want_loss) <= 1e-5
    assert_close(g, want_g)
    full = f"f32[{B},{T},{V}]"
    assert full in hlo(jax.value_and_grad(ref), p)  # the check can see the shape …
    assert full not in hlo(sharded, p, tokens, targets)  # … and the split softmax never makes it


def test_check_vma_true_already_sums_a_replicated_parameters_gradient():
    """Why dp_mean_grads belongs to the check_vma=False form: with check_vma=True, JAX's
    transpose of the implicit varying-cast of a replicated parameter is itself the all-reduce."""
    mesh, w = mesh_of((8,), ("data",)), jnp.ones((D,)) * 0.1
    x = jax.random.normal(jax.random.key(5), (8 * 4, D))
    local_grad = jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)))
    typed = jax.shard_map(local_grad, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(), check_vma=True)
    assert counts(hlo(typed, w, x)) == {"all-reduce": 1}
    assert rel(jax.jit(typed)(w, x), local_grad(w, x)) <= 1e-5  # the sum over devices, not the mean


# --- named scopes -------------------------------------------------------------------------------

SCOPED = ("megatron_f", "megatron_g", "sp_gather", "sp_scatter", "zero3_gather", "dp_mean_grads",
          "expert_dispatch", "expert_return", "vocab_parallel_embed", "vocab_parallel_cross_entropy")


def test_every_collective_of_a_step_carries_its_operators_name_forward_and_backward():
    """A step using every operator: each collective of the compiled HLO names (in its ``op_name``
    metadata) the operator that issued it, and every operator is seen in both directions where
    it communicates both ways."""
    n, t, v = 8, 16, 64
    mesh = mesh_of((n,), ("d",))

    def loss(p, x, tok):
        w = zero3_gather(p["w"], "d")                                    # [D, D] from [D/n, D]
        h = megatron_g(megatron_f(x, "d") @ w, "d")
        h = sp_gather(sp_scatter(h, "d", 0), "d", 0)
        h = h + vocab_parallel_embed(tok, p["table"], "d")
        buf = expert_return(expert_dispatch(h.reshape(1, n, t // n, D), "d"), "d").reshape(t, D)
        return vocab_parallel_cross_entropy(buf @ p["table"].T, tok, "d").mean()

    step = jax.shard_map(lambda p, x, tok: dp_mean_grads(jax.grad(loss, argnums=(0, 1))(p, x, tok), "d"),
                         mesh=mesh, in_specs=({"w": P("d"), "table": P("d")}, P(), P()),
                         out_specs=({"w": P("d"), "table": P("d")}, P()), check_vma=False)
    p = {"w": jnp.ones((D, D)), "table": jnp.ones((v, D))}
    ops = collectives_by_op(hlo(step, p, jnp.ones((t, D)), jnp.zeros((t,), jnp.int32)))
    scopes = [set(re.findall(r"(transpose\()?(?:jvp\()?\b(" + "|".join(SCOPED) + r")\b", op["op_name"]))
              for op in ops]
    assert all(scopes), [op["op_name"] for op, s in zip(ops, scopes) if not s]
    forward = {name for s in scopes for back, name in s if not back}
    backward = {name for s in scopes for back, name in s if back}
    assert forward == set(SCOPED) - {"megatron_f"}                       # f: identity forward
    assert backward == {"megatron_f", "sp_gather", "sp_scatter", "zero3_gather", "expert_dispatch",
                        "expert_return"}                                  # g and the vocab ops: identity back
