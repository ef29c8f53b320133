"""The Llama-style decoder: RMSNorm and SwiGLU are their formulas, GQA is MHA with shared k/v heads,
causal, scan ≡ unrolled, remat keeps gradients, KV-cached decoding equals recomputing, Mixtral's
routing equals transformers' (``MixtralTopKRouter``, ``load_balancing_loss_func``)."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import ModelConfig
from lineage_jax.decode import kv_cache as kc
from lineage_jax.models import build
from lineage_jax.models.llama import Llama
from lineage_jax.models.mixtral import load_balancing_loss, mixtral_route
from lineage_jax.decode.generation import generate_recompute

# odd shapes: K = 8, G = 3 query heads per key/value head, F not a multiple of D
BASE = ModelConfig(arch="llama", vocab_size=61, context=16, layers=2, width=48, heads=6, kv_heads=2, mlp_dim=72,
                   rope_theta=500.0, layernorm_eps=1e-5, attn_chunks=2, init_std=0.2, tied=False)
MIXTRAL = dataclasses.replace(BASE, moe_every=1, experts=5, moe_k=2, moe_backend="dropless")


def init(cfg, seed=0, B=2):
    model = Llama(cfg)
    toks = jax.random.randint(jax.random.key(seed + 1), (B, cfg.context), 0, cfg.vocab_size)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), toks)["params"])
    # norm scales away from 1 so their use is exercised
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape) if "scale" in jax.tree_util.keystr(p)
        else a, params)
    return model, params, toks


@functools.partial(jax.jit, static_argnums=0)
def fwd(model, params, toks):
    return model.apply({"params": params}, toks)


def unstack(params, L):
    out = {k: v for k, v in params.items() if k != "blocks"}
    out.update({f"blocks_{i}": jax.tree.map(lambda a, i=i: a[i], params["blocks"]) for i in range(L)})
    return out


def test_build_picks_llama_and_every_parameter_is_logically_named():
    assert isinstance(build(BASE), Llama)
    for cfg in (BASE, MIXTRAL):
        boxed = jax.eval_shape(lambda: Llama(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]
        paths = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        leaves = [leaf for _, leaf in paths]
        for path, leaf in paths:
            assert isinstance(leaf, nn.Partitioned), leaf
            assert len(leaf.names) == leaf.value.ndim and None not in leaf.names, leaf.names
            assert (leaf.names[0] == "layers") == ("blocks" in jax.tree_util.keystr(path))   # the scanned stack
        names = {n for leaf in leaves for n in leaf.names}
        assert {"layers", "embed", "heads", "kv", "mlp"} <= names
    flat = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(
        nn.unbox(jax.eval_shape(lambda: Llama(dataclasses.replace(BASE, scan_layers=False)).init(
            jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]))}
    assert flat["['lm_head']"] == (48, 61) and flat["['blocks_0']['attn']['key']['kernel']"] == (48, 2, 8)
    assert flat["['blocks_0']['attn']['query']['kernel']"] == (48, 6, 8)
    assert flat["['blocks_1']['mlp']['gate']['kernel']"] == (48, 72)
    assert not any("bias" in k for k in flat)                           # Llama has no biases


def test_gqa_equals_mha_with_repeated_key_value_heads():
    """Query head h reads k/v head h // G: the GQA model equals an MHA model whose k/v kernels repeat."""
    model, params, toks = init(dataclasses.replace(BASE, scan_layers=False))
    mha = Llama(dataclasses.replace(BASE, scan_layers=False, kv_heads=0))
    rep = jax.tree.map(lambda a: a, params)
    for i in range(BASE.layers):
        for n in ("key", "value"):
            rep[f"blocks_{i}"]["attn"][n]["kernel"] = jnp.repeat(params[f"blocks_{i}"]["attn"][n]["kernel"], 3, axis=1)
    np.testing.assert_allclose(fwd(mha, rep, toks), fwd(model, params, toks),
                               rtol=1e-5, atol=1e-5)
    mixed = jax.tree.map(lambda a: a, rep)   # a k/v pattern that is not h // G is not what GQA computes
    for i in range(BASE.layers):
        mixed[f"blocks_{i}"]["attn"]["key"]["kernel"] = jnp.tile(params[f"blocks_{i}"]["attn"]["key"]["kernel"],
                                                                 (1, 3, 1))
    assert np.abs(np.asarray(fwd(mha, mixed, toks) - fwd(model, params, toks))).max() > 1e-3


@pytest.mark.parametrize("cfg", [BASE, MIXTRAL], ids=["llama", "mixtral"])
def test_causal_and_scan_equals_unrolled(cfg):
    model, params, toks = init(cfg)
    out = fwd(model, params, toks)
    assert out.shape == (2, 16, 61)
    later = toks.at[:, 9:].set((toks[:, 9:] + 1) % cfg.vocab_size)
    np.testing.assert_allclose(fwd(model, params, later)[:, :9], out[:, :9], atol=1e-5)
    assert np.abs(np.asarray(fwd(model, params, later)[:, 9:] - out[:, 9:])).max() > 1e-3
    flat = Llama(dataclasses.replace(cfg, scan_layers=False, attn_chunks=1))
    np.testing.assert_allclose(fwd(flat, unstack(params, cfg.layers), toks), out, rtol=1e-5, atol=1e-5)


def test_remat_keeps_gradients_and_padded_vocab_is_never_predicted():
    model, params, toks = init(BASE)
    loss = lambda m: lambda p: jnp.mean(jax.nn.log_softmax(fwd(m, p, toks))[..., 0])
    g0 = jax.jit(jax.grad(loss(model)))(params)
    g1 = jax.jit(jax.grad(loss(Llama(dataclasses.replace(BASE, remat="full")))))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)
    padded = Llama(dataclasses.replace(BASE, vocab_multiple=8))
    pp = dict(params, wte=jnp.pad(params["wte"], ((0, 3), (0, 0))),
              lm_head=jnp.pad(params["lm_head"], ((0, 0), (0, 3))))
    out = fwd(padded, pp, toks)
    assert out.shape == (2, 16, 64)
    np.testing.assert_allclose(out[..., :61], fwd(model, params, toks), atol=1e-5)
    assert float(out[..., 61:].max()) == float(jnp.finfo(out.dtype).min)


@pytest.mark.parametrize("cfg,generate", [(dataclasses.replace(BASE, context=24), True),
                                          pytest.param(dataclasses.replace(MIXTRAL, context=24), False,
                                                       marks=pytest.mark.slow),
                                          (dataclasses.replace(BASE, context=24, scan_layers=False, tied=True), False)],
                         ids=["gqa", "mixtral", "unrolled-tied"])
def test_kv_cache_prefill_decode_and_greedy_generation_equal_recompute(cfg, generate):
    model, params, toks = init(cfg, B=3)
    lengths = np.array([5, 9, 2], np.int32)
    P = int(lengths.max())
    prompts = np.where(np.arange(P)[None] < lengths[:, None], np.asarray(toks[:, :P]), 0).astype(np.int32)
    full = fwd(model, params, toks)
    logits, cache = jax.jit(kc.prefill, static_argnums=0)(model, params, kc.init_cache(cfg, 3), prompts, lengths)
    assert cache.k.shape == (2, 3, 24, 2, 8)                      # kv_heads, not heads, are cached
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(logits[b, :n], full[b, :n], atol=1e-4)
    step = jax.jit(kc.decode_step, static_argnums=0)
    rows = jnp.arange(3)
    for _ in range(6):
        pos = cache.lengths
        last, cache = step(model, params, cache, toks[rows, pos])
        np.testing.assert_allclose(last, full[rows, pos], atol=1e-4)
    if not generate:
        return
    out, lens = kc.generate_cached(model, params, prompts, lengths, 10, key=jax.random.key(3))
    ref, ref_lens = generate_recompute(model, params, prompts, lengths, 10, key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(lens), ref_lens)
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_mixtral_routing_equals_transformers():
    torch = pytest.importorskip("torch")
    mm = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    E, k, D = 7, 3, 12
    cfg = mm.MixtralConfig(hidden_size=D, num_local_experts=E, num_experts_per_tok=k)
    router = mm.MixtralTopKRouter(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        router.weight.normal_()
    x = torch.randn(40, D)
    logits_t, w_t, i_t = router(x)
    r = mixtral_route(jnp.asarray(logits_t.detach().numpy()), k, aux_weight=1.0)
    np.testing.assert_array_equal(np.asarray(r.expert_index), i_t.numpy())
    np.testing.assert_allclose(np.asarray(r.combine_weight), w_t.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(r.combine_weight).sum(-1), 1.0, rtol=1e-6)
    want = mm.load_balancing_loss_func((logits_t.detach(),), E, k)
    np.testing.assert_allclose(float(r.aux["balance_loss"]), float(want), rtol=1e-5)
    probs = jax.nn.softmax(jnp.asarray(logits_t.detach().numpy()), -1)
    assert float(load_balancing_loss(probs, r.expert_index)) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.slow
def test_mixtral_capacity_without_drops_equals_dropless_and_sows_losses():
    """The capacity backend with room for every assignment equals the dropless one; one aux loss per layer."""
    model, params, toks = init(MIXTRAL)
    cap = Llama(dataclasses.replace(MIXTRAL, moe_backend="capacity", capacity_factor=float(MIXTRAL.experts)))
    np.testing.assert_allclose(fwd(cap, params, toks), fwd(model, params, toks), atol=1e-5)
    _, sown = jax.jit(lambda p, t: model.apply({"params": p}, t, mutable=["moe"]))(params, toks)
    assert sown["moe"]["blocks"]["moe"]["aux_loss"][0].shape == (MIXTRAL.layers,)   # one per scanned layer


PARALLEL = ["model.arch=llama", "model.layers=2", "model.width=64", "model.heads=4", "model.kv_heads=2",
            "model.mlp_dim=96", "model.context=32", "model.attn_chunks=2", "model.vocab_multiple=8", "model.tied=false",
            "train.batch_size=8", "train.steps=20", "optim.warmup_steps=2"]
MESH_2x2x2 = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "parallel.zero_stage=3"]


def _losses(overrides, devices, steps=3):
    from lineage_jax.config import load_config
    from lineage_jax.train.setup import build
    setup = build(load_config("tiny", PARALLEL + overrides), devices=devices)
    state = setup.init_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        state, m = setup.train_step(state, setup.put_batch(rng.integers(0, 257, (8, 33))))
        out.append(float(m["loss"]))
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("form", [["parallel.sequence_parallel=true"], ["parallel.form=shard_map"],
                                  ["parallel.form=shard_map", "parallel.sequence_parallel=true"]],
                         ids=["gspmd-sp", "shard_map", "shard_map-sp"])
def test_parallel_strategies_train_llama_as_one_device(form):
    """The logical axes suffice: DP × ZeRO-3 × Megatron TP (+SP) on 8 devices, GSPMD or explicit collectives,
    trains a GQA Llama with an untied head exactly as one device does (3 steps)."""
    one = _losses(["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"], jax.devices()[:1])
    np.testing.assert_allclose(_losses(MESH_2x2x2 + form, jax.devices()), one, rtol=1e-5)
