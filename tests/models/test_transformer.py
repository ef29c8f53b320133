"""The original Transformer (Vaswani et al. 2017): an encoder-decoder with post-LN blocks, sinusoidal
positions, embeddings scaled by √d_model and shared three ways; greedy decoding in one compile."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen
from flax.core import meta

from lineage_jax.models.transformer import Transformer, TransformerConfig, greedy_decode

CFG = TransformerConfig(vocab_size=23, d_model=32, heads=4, d_ff=48, encoder_layers=2, decoder_layers=2,
                        dropout=0.0, max_len=16)
PAD, BOS, EOS = 0, 1, 2


@functools.lru_cache(maxsize=None)
def _init(cfg=CFG, seed=0):
    """(model, boxed params, params), initialised once per config for the whole file."""
    model = Transformer(cfg)
    src, tgt = jnp.ones((2, 7), jnp.int32), jnp.ones((2, 5), jnp.int32)
    boxed = jax.jit(model.init)(jax.random.key(seed), src, tgt)["params"]
    return model, boxed, meta.unbox(boxed)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(model, method, params, *args):
    """model.apply jitted and cached across tests (eager Flax dispatches op by op: slow on CPU)."""
    return model.apply({"params": params}, *args, method=method)


def _fwd(model):
    return functools.partial(_apply, model, None)


def _batch(seed=1, B=3, S=7, T=5):
    rng = np.random.default_rng(seed)
    src = rng.integers(3, CFG.vocab_size, (B, S)).astype(np.int32)
    src[0, 4:] = PAD   # ragged: row 0 has 4 real tokens, row 1 has 6
    src[1, 6:] = PAD
    tgt = rng.integers(3, CFG.vocab_size, (B, T)).astype(np.int32)
    tgt[:, 0] = BOS
    return jnp.asarray(src), jnp.asarray(tgt)


def test_shapes_logical_axes_and_one_shared_embedding():
    model, boxed, params = _init()
    src, tgt = _batch()
    assert _fwd(model)(params, src, tgt).shape == (3, 5, CFG.vocab_size)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, flax.linen.LogicallyPartitioned))
    for leaf in leaves:   # every parameter names each of its axes
        assert isinstance(leaf, flax.linen.LogicallyPartitioned) and len(leaf.names) == leaf.value.ndim
        assert all(leaf.names), leaf.names
    # §3.4: one [V, D] table for source, target and output; no other vocab-sized parameter
    vocab_sized = [leaf for leaf in leaves if "vocab" in leaf.names]
    assert len(vocab_sized) == 1 and vocab_sized[0].value.shape == (CFG.vocab_size, CFG.d_model)
    D, F, V, L = CFG.d_model, CFG.d_ff, CFG.vocab_size, CFG.encoder_layers
    attn, ffn, ln = 4 * D * D + 4 * D, 2 * D * F + F + D, 2 * D
    encoder, decoder = attn + ffn + 2 * ln, 2 * attn + ffn + 3 * ln
    assert sum(x.size for x in jax.tree.leaves(params)) == V * D + L * encoder + L * decoder


def test_decoder_is_causal():
    """Changing target token t changes no logits before t (and does change those from t on)."""
    model, _, params = _init()
    src, tgt = _batch()
    fwd = _fwd(model)
    base = fwd(params, src, tgt)
    for t in range(1, tgt.shape[1]):
        changed = fwd(params, src, tgt.at[:, t].set((tgt[:, t] + 1) % CFG.vocab_size))
        np.testing.assert_array_equal(np.asarray(changed[:, :t]), np.asarray(base[:, :t]))
        assert float(jnp.abs(changed[:, t:] - base[:, t:]).max()) > 1e-3


def test_source_padding_is_invisible():
    """Padded source positions change nothing: extra PAD columns give the same logits, and whatever
    the encoder leaves at padded positions of the memory is never read by cross-attention."""
    model, _, params = _init()
    src, tgt = _batch()
    fwd = _fwd(model)
    base = fwd(params, src, tgt)
    longer = jnp.pad(src, ((0, 0), (0, 4)), constant_values=PAD)
    np.testing.assert_allclose(fwd(params, longer, tgt), base, atol=1e-5, rtol=1e-5)
    memory = _apply(model, Transformer.encode, params, src)
    noise = jax.random.normal(jax.random.key(3), memory.shape) * 10
    scrambled = jnp.where((src == PAD)[..., None], noise, memory)
    out = _apply(model, Transformer.decode, params, tgt, scrambled, src)
    np.testing.assert_allclose(out, base, atol=1e-5, rtol=1e-5)
    # ... while a real source token does matter
    assert float(jnp.abs(fwd(params, src.at[0, 0].set(5 + (src[0, 0] == 5)), tgt)[0] - base[0]).max()) > 1e-3


def test_post_ln_every_block_ends_in_layer_norm():
    """x = LN(x + Sublayer(x)): with LN's initial scale 1 and bias 0, every encoder position of the output
    (real or padded) has mean 0 and variance 1 over the features; a pre-LN stack would not."""
    model, _, params = _init()
    src, _ = _batch()
    memory = _apply(model, Transformer.encode, params, src)
    np.testing.assert_allclose(memory.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(memory.var(-1), 1.0, atol=1e-3)


def _sinusoid_numpy(T, D):
    pe = np.zeros((T, D))
    for pos in range(T):
        for i in range(0, D, 2):
            pe[pos, i] = math.sin(pos / 10000 ** (i / D))
            pe[pos, i + 1] = math.cos(pos / 10000 ** (i / D))
    return pe


def test_equals_torch_transformer_post_ln():
    """Logits equal a model assembled from torch.nn.TransformerEncoder/DecoderLayer (norm_first=False,
    ReLU), with the embedding E·√D + PE and the output projection y·Eᵀ written in torch by hand."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model, _, params = _init()
    src, tgt = _batch()
    D, H, F = CFG.d_model, CFG.heads, CFG.d_ff
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)

    def load_mha(mha, p):
        w = [np.asarray(p[n]["kernel"]).reshape(D, D).T for n in ("query", "key", "value")]
        b = [np.asarray(p[n]["bias"]).reshape(D) for n in ("query", "key", "value")]
        mha.in_proj_weight.copy_(t(np.concatenate(w)))
        mha.in_proj_bias.copy_(t(np.concatenate(b)))
        mha.out_proj.weight.copy_(t(np.asarray(p["out"]["kernel"]).reshape(D, D).T))
        mha.out_proj.bias.copy_(t(p["out"]["bias"]))

    def load_ffn_ln(layer, p, norms):
        layer.linear1.weight.copy_(t(np.asarray(p["ffn"]["fc"]["kernel"]).T))
        layer.linear1.bias.copy_(t(p["ffn"]["fc"]["bias"]))
        layer.linear2.weight.copy_(t(np.asarray(p["ffn"]["proj"]["kernel"]).T))
        layer.linear2.bias.copy_(t(p["ffn"]["proj"]["bias"]))
        for torch_name, ours in norms:
            getattr(layer, torch_name).weight.copy_(t(p[ours]["scale"]))
            getattr(layer, torch_name).bias.copy_(t(p[ours]["bias"]))

    make = dict(d_model=D, nhead=H, dim_feedforward=F, dropout=0.0, activation="relu", layer_norm_eps=1e-5,
                batch_first=True, norm_first=False)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(**make), CFG.encoder_layers, enable_nested_tensor=False)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(**make), CFG.decoder_layers)
    with torch.no_grad():
        for i, layer in enumerate(enc.layers):
            p = params[f"encoder_{i}"]
            load_mha(layer.self_attn, p["self_attn"])
            load_ffn_ln(layer, p, [("norm1", "attn_norm"), ("norm2", "ffn_norm")])
        for i, layer in enumerate(dec.layers):
            p = params[f"decoder_{i}"]
            load_mha(layer.self_attn, p["self_attn"])
            load_mha(layer.multihead_attn, p["cross_attn"])
            load_ffn_ln(layer, p, [("norm1", "self_norm"), ("norm2", "cross_norm"), ("norm3", "ffn_norm")])
        E = t(params["embedding"])
        embed = lambda ids: E[torch.tensor(np.asarray(ids), dtype=torch.long)] * math.sqrt(D) \
            + t(_sinusoid_numpy(ids.shape[1], D))
        pad = torch.tensor(np.asarray(src == PAD))
        T = tgt.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)   # True = may not attend
        enc.train(), dec.train()   # the reference (non-fast-path) kernels; dropout is 0
        memory = enc(embed(src), src_key_padding_mask=pad)
        y = dec(embed(tgt), memory, tgt_mask=causal, memory_key_padding_mask=pad)
        ref = (y @ E.T).numpy()
    ours = np.asarray(_fwd(model)(params, src, tgt))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_dropout_is_active_only_when_not_deterministic():
    plain, _, params = _init()
    model = Transformer(TransformerConfig(**{**CFG.__dict__, "dropout": 0.3}))   # same parameters
    src, tgt = _batch()
    det = _fwd(model)(params, src, tgt)
    np.testing.assert_array_equal(det, _fwd(plain)(params, src, tgt))
    train = jax.jit(lambda p, key: model.apply({"params": p}, src, tgt, deterministic=False, rngs={"dropout": key}))
    a, b = train(params, jax.random.key(0)), train(params, jax.random.key(1))
    assert float(jnp.abs(a - det).max()) > 1e-3 and float(jnp.abs(a - b).max()) > 1e-3


def test_greedy_decode_equals_recomputing_the_prefix_and_compiles_once():
    """The compiled while_loop picks the same tokens as a Python loop that re-reads each row's prefix
    and stops at EOS; a second batch of the same shape reuses the compiled program."""
    model, _, params = _init()
    # make EOS likely after a few steps so the EOS/PAD bookkeeping is exercised
    params = {**params, "embedding": params["embedding"].at[EOS].mul(3.0)}
    src, _ = _batch(B=4)
    max_len = 6
    fwd = _fwd(model)
    out = np.asarray(greedy_decode(model, params, src, max_len=max_len, bos_id=BOS, eos_id=EOS))
    assert out.shape == (4, max_len)
    for b in range(src.shape[0]):
        prefix, expected = [BOS], []
        while len(expected) < max_len:   # the prefix, PAD-filled to one shape (causal: the tail is unseen)
            logits = fwd(params, src[b:b + 1], jnp.asarray([prefix + [PAD] * (max_len - len(prefix))]))
            nxt = int(jnp.argmax(logits[0, len(prefix) - 1]))
            expected.append(nxt)
            prefix.append(nxt)
            if nxt == EOS:
                break
        expected += [PAD] * (max_len - len(expected))
        assert out[b].tolist() == expected
    assert any(EOS in row for row in out.tolist())
    size = greedy_decode._cache_size()
    greedy_decode(model, params, jnp.flip(src, 0), max_len=max_len, bos_id=BOS, eos_id=EOS).block_until_ready()
    assert greedy_decode._cache_size() == size


def test_bad_config_is_one_clear_error():
    with pytest.raises(ValueError, match="divisible by heads"):
        TransformerConfig(d_model=30, heads=4)
    with pytest.raises(ValueError, match="max_len=16"):
        Transformer(CFG).init(jax.random.key(0), jnp.ones((1, 17), jnp.int32), jnp.ones((1, 2), jnp.int32))
