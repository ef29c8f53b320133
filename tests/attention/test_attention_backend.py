"""The attention backend switch: every kernel computes the same attention; impossible requests fail in one line.

On this CPU the Pallas FlashAttention kernels run in interpret mode: the TPU (Mosaic) kernel
under ``pltpu.force_tpu_interpret_mode()`` and the GPU (Triton) kernel with ``interpret=True``.
Both are independent implementations of Dao et al.'s algorithm, so they check ours a second way.
cuDNN needs an NVIDIA GPU: here only its refusal and the "auto" choice are tested.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.attention import backend
from lineage_jax.attention.backend import AttentionBackendError, attention


def _qkv(B=1, T=128, S=128, H=4, Hkv=2, K=32, dtype=jnp.float32, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (B, T, H, K), dtype), jax.random.normal(ks[1], (B, S, Hkv, K), dtype),
            jax.random.normal(ks[2], (B, S, Hkv, K), dtype))


def _segments(B, T):
    """Three packed documents per row, at different cut points per row."""
    cuts = [(T // 3 + 7 * b, 2 * T // 3 + 5 * b) for b in range(B)]
    return jnp.asarray([[1 + (t >= c0) + (t >= c1) for t in range(T)] for c0, c1 in cuts], jnp.int32)


def _value_and_grads(impl, q, k, v, **kw):
    w = jax.random.normal(jax.random.key(7), q.shape)
    f = lambda q, k, v: attention(q, k, v, implementation=impl, **kw)
    out = f(q, k, v)
    grads = jax.grad(lambda q, k, v: (f(q, k, v) * w).sum(), (0, 1, 2))(q, k, v)
    return out, grads


def _assert_same(a, b, atol):
    (o1, g1), (o2, g2) = a, b
    np.testing.assert_allclose(o1, o2, atol=atol)
    for x, y in zip(g1, g2):
        np.testing.assert_allclose(x, y, atol=atol)


def test_naive_xla_flash_agree_on_a_packed_causal_grouped_request():
    q, k, v = _qkv(B=2, T=40, S=40)
    seg = _segments(2, 40)
    jit_vg = lambda impl: jax.jit(lambda q, k, v: _value_and_grads(impl, q, k, v, causal=True, segment_ids=seg))
    ref = jit_vg("naive")(q, k, v)
    for impl in ("xla", "flash", "auto"):
        _assert_same(jit_vg(impl)(q, k, v), ref, 1e-5)


def test_causal_is_bottom_right_for_every_kernel_when_t_differs_from_s():
    """T < S (queries are the last T positions, as with a cache): jax.nn gets an explicit mask; with a bias too."""
    q, k, v = _qkv(T=12, S=30)
    bias = jax.random.normal(jax.random.key(4), (4, 12, 30))          # e.g. ALiBi's [H, T, S]
    for b in (None, bias):
        ref = attention(q, k, v, causal=True, bias=b, implementation="naive")
        for impl in ("xla", "flash"):
            np.testing.assert_allclose(attention(q, k, v, causal=True, bias=b, implementation=impl), ref, atol=1e-5)


def test_pallas_tpu_kernel_in_interpret_mode_equals_ours():
    """Mosaic TPU FlashAttention, interpreted: causal, packed segments and a bias; values and gradients."""
    q, k, v = _qkv(T=128, S=128, H=2, Hkv=1)
    seg = _segments(1, 128)
    bias = 0.1 * jax.random.normal(jax.random.key(3), (2, 128, 128))
    kw = dict(causal=True, segment_ids=seg, bias=bias)
    _assert_same(_value_and_grads("pallas", q, k, v, interpret=True, **kw),
                 jax.jit(lambda q, k, v: _value_and_grads("flash", q, k, v, **kw))(q, k, v), 2e-5)


def test_pallas_gpu_triton_kernel_in_interpret_mode_equals_ours():
    """Triton FlashAttention (``ops.gpu.attention.mha``), interpreted: causal + packed segments."""
    q, k, v = _qkv(T=128, S=128, H=2, Hkv=2)
    seg = _segments(1, 128)
    got = (backend.pallas_gpu(q, k, v, causal=True, segment_ids=seg, interpret=True),)
    w = jax.random.normal(jax.random.key(7), q.shape)
    got += (jax.grad(lambda q, k, v: (backend.pallas_gpu(q, k, v, causal=True, segment_ids=seg,
                                                         interpret=True) * w).sum(), (0, 1, 2))(q, k, v),)
    _assert_same(got, _value_and_grads("flash", q, k, v, causal=True, segment_ids=seg), 2e-5)


def _shapes(B=1, T=128, S=128, H=4, Hkv=2, K=32, dtype=jnp.float32):
    """q, k, v as shapes only (the choice reads nothing else)."""
    return (jax.ShapeDtypeStruct((B, T, H, K), dtype), jax.ShapeDtypeStruct((B, S, Hkv, K), dtype),
            jax.ShapeDtypeStruct((B, S, Hkv, K), dtype))


def test_auto_chooses_by_platform_dtype_and_shape():
    f32, bf16 = _shapes(T=256, S=256, K=64), _shapes(T=256, S=256, K=64, dtype=jnp.bfloat16)
    assert backend.choose(*f32, platform="cpu", causal=True) == "flash"
    assert backend.choose(*bf16, platform="gpu", causal=True) == "cudnn"
    assert backend.choose(*f32, platform="gpu", causal=True) == "flash"              # cuDNN: f16/bf16 only
    assert backend.choose(*bf16, platform="gpu", causal=True, segment_ids=jnp.ones((1, 256), jnp.int32)) == "flash"
    assert backend.choose(*_shapes(T=256, S=256, K=20, dtype=jnp.bfloat16), platform="gpu") == "flash"   # head dim
    assert backend.choose(*f32, platform="tpu", causal=True) == "pallas"
    assert backend.choose(*_shapes(T=200, S=200), platform="tpu", causal=True) == "flash"    # not a 128 multiple
    assert backend.choose(*_shapes(T=128, S=256), platform="tpu", causal=True) == "flash"    # causal, T != S


def test_impossible_requests_fail_in_one_line():
    q, k, v = _qkv(T=40, S=40)
    cases = [(dict(implementation="fast"), "allowed: auto, naive, xla, flash, cudnn, pallas"),
             (dict(implementation="cudnn"), "needs an NVIDIA GPU, this is cpu"),
             (dict(implementation="pallas"), "pass interpret=True"),
             (dict(implementation="pallas", interpret=True), "lengths must be multiples of 128")]
    for kw, msg in cases:
        with pytest.raises(AttentionBackendError, match=msg) as e:
            attention(q, k, v, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(AttentionBackendError, match="4 query heads do not divide into 3"):
        attention(q, *_qkv(Hkv=3, T=40, S=40)[1:])
    assert "bfloat16" in backend.cudnn_unsupported(q, k, v, platform="gpu")
    assert "T == S" in backend.pallas_unsupported(*_shapes(T=128, S=256), kernel="tpu", causal=True)
    assert "no bias" in backend.pallas_unsupported(*_shapes(), kernel="gpu", bias=jnp.zeros((128, 128)))
