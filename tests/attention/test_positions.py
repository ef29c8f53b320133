"""Position encodings: each has its paper's property and equals the reference implementation in the wild.

sinusoidal (Vaswani 2017) · RoPE both layouts (Su 2021; GPT-NeoX/HF vs Meta) · ALiBi (Press 2022) ·
T5 relative buckets (Raffel 2020). The torch comparisons use transformers' own functions on CPU.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.attention.positions import (alibi_bias, alibi_slopes, half_to_interleaved,
                                             interleaved_to_half, rope_interleaved, rope_rotate_half,
                                             sinusoidal, t5_bias, t5_relative_bucket)


def _scores(q, k):
    """q·k for every (query, key) pair and head: [..., T, H, K] x [..., S, H, K] -> [..., H, T, S]."""
    return jnp.einsum("...thk,...shk->...hts", q, k, precision="highest")


# --------------------------------------------------------------------------- sinusoidal

def test_sinusoidal_at_position_zero_is_sin0_cos0():
    pe = sinusoidal(jnp.arange(1), 16)
    np.testing.assert_array_equal(pe[0], np.tile([0.0, 1.0], 8))


def test_sinusoidal_equals_the_papers_formula_in_numpy():
    d, pos = 32, np.arange(50)
    ref = np.zeros((50, d))
    for i in range(d // 2):                       # PE(pos,2i)=sin(pos/10000^(2i/d)), PE(pos,2i+1)=cos(...)
        ref[:, 2 * i] = np.sin(pos / 10000 ** (2 * i / d))
        ref[:, 2 * i + 1] = np.cos(pos / 10000 ** (2 * i / d))
    np.testing.assert_allclose(sinusoidal(jnp.asarray(pos), d), ref, atol=2e-5)
    assert sinusoidal(jnp.zeros((3, 7), jnp.int32), d).shape == (3, 7, d)


@pytest.mark.parametrize("k", [1, 5, 17])
def test_sinusoidal_shift_is_a_rotation_of_each_pair(k):
    """PE(pos + k) = M_k PE(pos), M_k block-diagonal rotations by k·ω_i, independent of pos."""
    d = 16
    pos = jnp.arange(40)
    pe, pe_k = sinusoidal(pos, d).reshape(40, d // 2, 2), sinusoidal(pos + k, d).reshape(40, d // 2, 2)
    omega = 10000.0 ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(k * omega), np.sin(k * omega)
    M = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)   # [d/2, 2, 2], rows (sin', cos')
    pred = np.einsum("iab,pib->pia", M, np.asarray(pe, np.float64))
    np.testing.assert_allclose(pe_k, pred, atol=5e-5)


# --------------------------------------------------------------------------- RoPE

def _meta_rope_numpy(x, positions, theta):
    """Meta's original RoPE in numpy float64: adjacent pairs as complex numbers times e^{i m θ_k}."""
    K = x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, K, 2) / K)
    rot = np.exp(1j * np.asarray(positions, np.float64)[:, None] * freqs)        # [T, K/2]
    xc = x[..., 0::2] + 1j * x[..., 1::2]                                        # [..., T, H, K/2]
    out = xc * rot[:, None, :]
    return np.stack([out.real, out.imag], -1).reshape(x.shape)


def test_rope_interleaved_equals_the_complex_form():
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 9, 3, 16)), np.float64)
    pos = np.arange(9) * 7
    out = rope_interleaved(jnp.asarray(x, jnp.float32), jnp.asarray(pos), 10000.0)
    np.testing.assert_allclose(out, _meta_rope_numpy(x, pos, 10000.0), atol=1e-5)


@pytest.mark.parametrize("rope", [rope_rotate_half, rope_interleaved])
def test_rope_is_relative_and_norm_preserving(rope):
    """⟨RoPE(q, m), RoPE(k, n)⟩ depends only on m − n (Su et al. 2021, eq. 16)."""
    kq, kk = jax.random.split(jax.random.key(1))
    q, k = jax.random.normal(kq, (1, 8, 2, 32)), jax.random.normal(kk, (1, 8, 2, 32))
    pos = jnp.arange(8)
    base = _scores(rope(q, pos), rope(k, pos))
    for shift, tol in ((3, 1e-5), (100, 1e-4), (4096, 5e-3)):   # float32 angles m·θ lose ~m·2⁻²⁴ rad
        shifted = _scores(rope(q, pos + shift), rope(k, pos + shift))
        chex.assert_trees_all_close(shifted, base, atol=tol, rtol=tol)
    chex.assert_trees_all_close(jnp.linalg.norm(rope(q, pos + 11), axis=-1), jnp.linalg.norm(q, axis=-1),
                                rtol=1e-5)
    chex.assert_trees_all_close(rope(q, jnp.zeros_like(pos)), q)          # position 0: the identity


def test_converter_maps_interleaved_onto_rotate_half():
    """Permuting W_q, W_k (HF's Llama conversion) makes rotate-half RoPE give Meta's scores."""
    D, H, K, T = 24, 3, 8, 11
    kx, kq, kk = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (2, T, D))
    wq, wk = jax.random.normal(kq, (D, H, K)) / 5, jax.random.normal(kk, (D, H, K)) / 5
    pos = jnp.arange(T) + 5
    proj = lambda w: jnp.einsum("btd,dhk->bthk", x, w, precision="highest")
    meta = _scores(rope_interleaved(proj(wq), pos), rope_interleaved(proj(wk), pos))
    hf = _scores(rope_rotate_half(proj(interleaved_to_half(wq)), pos),
                 rope_rotate_half(proj(interleaved_to_half(wk)), pos))
    chex.assert_trees_all_close(hf, meta, atol=1e-6, rtol=1e-6)
    # the other way round
    back = _scores(rope_interleaved(proj(half_to_interleaved(wq)), pos),
                   rope_interleaved(proj(half_to_interleaved(wk)), pos))
    chex.assert_trees_all_close(back, _scores(rope_rotate_half(proj(wq), pos), rope_rotate_half(proj(wk), pos)),
                                atol=1e-6, rtol=1e-6)
    # and the rotation itself commutes with the permutation: RoPE_half(P q) = P RoPE_int(q)
    q = proj(wq)
    chex.assert_trees_all_close(rope_rotate_half(interleaved_to_half(q), pos),
                                interleaved_to_half(rope_interleaved(q, pos)), atol=1e-6)
    # without the permutation the two conventions disagree
    assert not np.allclose(_scores(rope_rotate_half(proj(wq), pos), rope_rotate_half(proj(wk), pos)), meta,
                           atol=1e-3)


def test_converters_are_inverse_and_match_hfs_permute_on_flat_heads():
    H, K, D = 4, 8, 6
    w = np.arange(H * K * D, dtype=np.float32).reshape(H * K, D)          # torch layout [out = H·K, in]
    # HF convert_llama_weights_to_hf.permute, written out in numpy
    hf = w.reshape(H, K // 2, 2, D).transpose(0, 2, 1, 3).reshape(H * K, D)
    np.testing.assert_array_equal(interleaved_to_half(w, axis=0, head_dim=K), hf)
    np.testing.assert_array_equal(half_to_interleaved(hf, axis=0, head_dim=K), w)
    w3 = jax.random.normal(jax.random.key(3), (D, H, K))
    chex.assert_trees_all_equal(half_to_interleaved(interleaved_to_half(w3)), w3)
    chex.assert_trees_all_equal(interleaved_to_half(half_to_interleaved(w3)), w3)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_rotate_half_equals_transformers_llama(theta):
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    from transformers import LlamaConfig

    B, T, H, K = 2, 13, 4, 16
    cfg = LlamaConfig(hidden_size=H * K, num_attention_heads=H, num_key_value_heads=H, head_dim=K,
                      intermediate_size=32, num_hidden_layers=1, vocab_size=32, max_position_embeddings=4096,
                      rope_parameters={"rope_type": "default", "rope_theta": theta})
    rotary = llama.LlamaRotaryEmbedding(cfg)
    kq, kk, kp = jax.random.split(jax.random.key(4), 3)
    q, k = jax.random.normal(kq, (B, T, H, K)), jax.random.normal(kk, (B, T, H, K))
    pos = jax.random.randint(kp, (B, T), 0, 4000)
    tq, tk = (torch.from_numpy(np.array(a)).transpose(1, 2) for a in (q, k))   # HF: [B, H, T, K]
    tpos = torch.from_numpy(np.array(pos)).long()
    cos, sin = rotary(tq, tpos)
    ref_q, ref_k = llama.apply_rotary_pos_emb(tq, tk, cos, sin)
    out_q, out_k = rope_rotate_half(q, pos, theta), rope_rotate_half(k, pos, theta)
    np.testing.assert_allclose(out_q, ref_q.transpose(1, 2).numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(out_k, ref_k.transpose(1, 2).numpy(), atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------- ALiBi

def _alibi_paper_slopes(n):
    """The ALiBi paper's reference get_slopes, in Python floats."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _alibi_paper_slopes(2 * closest)[0::2][:n - closest]


def test_alibi_slopes_for_8_heads_are_half_to_1_over_256():
    np.testing.assert_array_equal(alibi_slopes(8), [2.0 ** -k for k in range(1, 9)])
    np.testing.assert_array_equal(alibi_slopes(16)[1::2], alibi_slopes(8))   # 16 heads: interleaves 8's


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 12, 16, 20, 24, 40])
def test_alibi_slopes_equal_the_papers_recipe(n):
    np.testing.assert_allclose(alibi_slopes(n), _alibi_paper_slopes(n), rtol=1e-7)


@pytest.mark.parametrize("n", [6, 8, 12, 20])
def test_alibi_equals_bloom(n):
    torch = pytest.importorskip("torch")
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    T = 10
    ref = bloom.build_alibi_tensor(torch.ones(1, T, dtype=torch.long), n, torch.float32)  # [n, 1, T]: m_h·j
    np.testing.assert_allclose(alibi_slopes(n), ref[:, 0, 1].numpy(), rtol=1e-6)
    # ours is m·(j − i); BLOOM's is m·j: the same row up to a constant, so the same softmax
    bias = alibi_bias(alibi_slopes(n), T)
    np.testing.assert_allclose(bias - ref.numpy(), np.broadcast_to((bias - ref.numpy())[:, :, :1], bias.shape),
                               atol=1e-5)
    causal = np.tril(np.ones((T, T), bool))
    sm = lambda b: jax.nn.softmax(jnp.where(causal, b, -jnp.inf), -1)
    chex.assert_trees_all_close(sm(bias), sm(jnp.broadcast_to(jnp.asarray(ref.numpy()), bias.shape)), atol=1e-6)


def test_alibi_bias_is_minus_slope_times_distance():
    m = alibi_slopes(4)
    b = alibi_bias(m, 6)
    assert b.shape == (4, 6, 6)
    for i in range(6):
        for j in range(i + 1):
            np.testing.assert_allclose(b[:, i, j], -m * (i - j), rtol=1e-7)


# --------------------------------------------------------------------------- T5 buckets

@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (64, 256)])
def test_t5_buckets_equal_transformers(bidirectional, num_buckets, max_distance):
    torch = pytest.importorskip("torch")
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = np.arange(-1000, 1001)
    ref = t5.T5Attention._relative_position_bucket(torch.from_numpy(rel), bidirectional=bidirectional,
                                                   num_buckets=num_buckets, max_distance=max_distance)
    out = t5_relative_bucket(jnp.asarray(rel), bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(out, ref.numpy())
    assert out.min() >= 0 and out.max() < num_buckets


def test_t5_buckets_exact_then_logarithmic():
    b = np.asarray(t5_relative_bucket(jnp.arange(-200, 201), True, 32, 128))
    rel = np.arange(-200, 201)
    np.testing.assert_array_equal(b[(rel <= 0) & (rel > -8)], -rel[(rel <= 0) & (rel > -8)])   # exact, before
    np.testing.assert_array_equal(b[(rel > 0) & (rel < 8)], 16 + rel[(rel > 0) & (rel < 8)])   # exact, after
    assert (b[rel <= -128] == 15).all() and (b[rel >= 128] == 31).all()                       # saturated
    assert (np.diff(b[rel <= 0][::-1]) >= 0).all()                                           # monotone in distance
    causal = np.asarray(t5_relative_bucket(jnp.arange(-200, 201), False, 32, 128))
    assert (causal[rel > 0] == 0).all() and (causal[rel <= -128] == 31).all()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bias_equals_transformers_compute_bias(bidirectional):
    torch = pytest.importorskip("torch")
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    from transformers import T5Config

    H = 3
    cfg = T5Config(d_model=16, d_kv=4, num_heads=H, relative_attention_num_buckets=32,
                   relative_attention_max_distance=128, is_decoder=not bidirectional)
    attn = t5.T5Attention(cfg, has_relative_attention_bias=True, layer_idx=0)
    table = np.array(jax.random.normal(jax.random.key(5), (32, H)))
    with torch.no_grad():
        attn.relative_attention_bias.weight.copy_(torch.from_numpy(table))
        ref = attn.compute_bias(40, 150).numpy()[0]                                   # [H, q, k]
    np.testing.assert_array_equal(t5_bias(jnp.asarray(table), 40, 150, bidirectional), ref)
