"""One attention call, many kernels: pick the fastest that can run the request.

    implementation  kernel                                                      runs on
    "naive"         ``mha.attention``: the T × S scores materialised             anywhere
    "xla"           ``jax.nn.dot_product_attention(implementation="xla")``       anywhere
    "flash"         ``flash.flash_attention``: our blockwise kernel (Dao 2022)   anywhere
    "cudnn"         ``jax.nn.dot_product_attention(implementation="cudnn")``     NVIDIA GPU, f16/bf16
    "pallas"        Pallas FlashAttention: Mosaic kernel on TPU,                 TPU, GPU; any device
                    Triton kernel on GPU                                         with interpret=True
    "auto"          GPU: cudnn where dtype/shape allow; TPU: pallas where shapes allow; else flash

Every kernel computes softmax(q kᵀ·scale + bias, masked) v (Vaswani et al. 2017, eq. 1) on
q [B, T, H, K], k/v [B, S, Hkv, K] (H % Hkv == 0; kernels without grouped heads get the key/value
heads repeated). ``causal`` aligns bottom-right (query i at position S − T + i, as
``mha.causal_mask``); the vendor kernels align top-left, so they take causal only when T == S.
``segment_ids`` [B, T] (with ``kv_segment_ids`` [B, S]; default the same) keep packed documents
apart. A request a kernel cannot run raises ``AttentionBackendError`` in one line.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lineage_jax.attention import mha
from lineage_jax.attention.flash import flash_attention
from lineage_jax.config.errors import UserError
from lineage_jax.nn.attention import causal_attention

IMPLEMENTATIONS = ("auto", "naive", "xla", "flash", "cudnn", "pallas")
PALLAS_BLOCK = 128       # the Pallas kernels' tiles: lengths must be multiples of this


class AttentionBackendError(UserError, ValueError):
    """An attention request a kernel cannot run, stated in one line."""


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
              segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
              bias: jax.Array | None = None, scale: float | None = None,
              implementation: str = "auto", interpret: bool = False) -> jax.Array:
    """softmax(q kᵀ·scale + bias, masked) v by the kernel ``implementation`` names (see module doc).

    q [B, T, H, K]; k, v [B, S, Hkv, K] -> [B, T, H, K]. ``interpret``: run the Pallas kernel in
    interpret mode (any device, slow; for checking), the TPU kernel unless on a GPU.
    """
    if implementation not in IMPLEMENTATIONS:
        raise AttentionBackendError(f"attention implementation {implementation!r}: allowed: {', '.join(IMPLEMENTATIONS)}")
    if q.ndim != 4 or k.ndim != 4 or v.shape[:3] != k.shape[:3] or q.shape[0] != k.shape[0]:
        raise AttentionBackendError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                                    "q [B, T, H, K], k/v [B, S, Hkv, K]")
    if q.shape[2] % k.shape[2]:
        raise AttentionBackendError(f"attention: {q.shape[2]} query heads do not divide into {k.shape[2]} key/value heads")
    if kv_segment_ids is not None and segment_ids is None:
        raise AttentionBackendError("attention: kv_segment_ids given without segment_ids")
    kw = dict(causal=causal, segment_ids=segment_ids,
              kv_segment_ids=segment_ids if kv_segment_ids is None else kv_segment_ids,
              bias=bias, scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale))
    platform = jax.default_backend()
    if implementation == "auto":
        implementation = choose(q, k, v, platform=platform, **kw)
    if implementation == "naive":
        return _naive(q, k, v, **kw)
    if implementation == "xla":
        return _jax_nn(q, k, v, "xla", **kw)
    if implementation == "flash":
        return flash_attention(q, k, v, **kw)
    if implementation == "cudnn":
        why = cudnn_unsupported(q, k, v, platform=platform, **kw)
        if why:
            raise AttentionBackendError(f"attention implementation 'cudnn': {why}")
        return _jax_nn(q, k, v, "cudnn", **kw)
    # pallas
    kernel = "gpu" if platform == "gpu" else "tpu" if platform == "tpu" or interpret else None
    if kernel is None:
        raise AttentionBackendError(f"attention implementation 'pallas' compiles for TPU (Mosaic) or GPU (Triton), "
                                    f"not {platform}; pass interpret=True to interpret it here")
    why = pallas_unsupported(q, k, v, kernel=kernel, **kw)
    if why:
        raise AttentionBackendError(f"attention implementation 'pallas' ({kernel} kernel): {why}")
    return (pallas_tpu if kernel == "tpu" else pallas_gpu)(q, k, v, interpret=interpret, **kw)


def choose(q, k, v, *, platform: str, **kw) -> str:
    """The kernel "auto" picks for this request on ``platform`` ("cpu", "gpu", "tpu")."""
    if platform == "gpu" and not cudnn_unsupported(q, k, v, platform=platform, auto=True, **kw):
        return "cudnn"
    if platform == "tpu" and not pallas_unsupported(q, k, v, kernel="tpu", **kw):
        return "pallas"
    return "flash"


# --------------------------------------------------------------------------- what each kernel can run

def cudnn_unsupported(q, k, v, *, platform: str, causal=False, segment_ids=None, bias=None, auto=False,
                      **_) -> str | None:
    """Why cuDNN's fused attention cannot run this request (None if it can)."""
    T, S, K = q.shape[1], k.shape[1], q.shape[3]
    if platform != "gpu":
        return f"needs an NVIDIA GPU, this is {platform}"
    if q.dtype not in (jnp.float16, jnp.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"needs float16 or bfloat16 q, k, v, got {q.dtype}, {k.dtype}, {v.dtype}"
    if K % 8 or K > 128:
        return f"head dim must be a multiple of 8 and at most 128, got {K}"
    if causal and T != S:
        return f"causal needs T == S (cuDNN aligns top-left), got T={T}, S={S}"
    if auto and segment_ids is not None:
        return "segment ids would become a T × S mask (our flash kernel keeps them linear)"
    return None


def pallas_unsupported(q, k, v, *, kernel: str, causal=False, segment_ids=None, kv_segment_ids=None,
                       bias=None, **_) -> str | None:
    """Why the Pallas FlashAttention kernel (``kernel`` "tpu" or "gpu") cannot run this request."""
    T, S = q.shape[1], k.shape[1]
    if T % PALLAS_BLOCK or S % PALLAS_BLOCK:
        return f"lengths must be multiples of {PALLAS_BLOCK}, got T={T}, S={S}"
    if v.shape[3] != q.shape[3]:
        return f"v's head dim {v.shape[3]} differs from q's {q.shape[3]}"
    if causal and T != S:
        return f"causal needs T == S (the kernel aligns top-left), got T={T}, S={S}"
    if kernel == "gpu":
        if bias is not None:
            return "the Triton kernel takes no bias"
        if segment_ids is not None and (T != S or not (kv_segment_ids is None or kv_segment_ids is segment_ids)):
            return "the Triton kernel takes one segment id array for queries and keys (self-attention)"
    return None


# --------------------------------------------------------------------------- the kernels

def _mask(q, k, causal, segment_ids, kv_segment_ids):
    T, S = q.shape[1], k.shape[1]
    return mha.combine_masks(mha.causal_mask(T, S) if causal else None,
                             None if segment_ids is None else mha.segment_mask(segment_ids, kv_segment_ids))


def _naive(q, k, v, *, causal, segment_ids, kv_segment_ids, bias, scale):
    return mha.attention(q, k, v, mask=_mask(q, k, causal, segment_ids, kv_segment_ids), bias=bias, scale=scale)


def _jax_nn(q, k, v, implementation, *, causal, segment_ids, kv_segment_ids, bias, scale):
    T, S = q.shape[1], k.shape[1]
    top_left_ok = causal and T == S
    mask = _mask(q, k, causal and not top_left_ok, segment_ids, kv_segment_ids)
    if bias is not None:
        bias = jnp.asarray(bias)
        bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=top_left_ok,
                                        implementation=implementation)


def _repeat_kv(q, x):
    """[B, S, Hkv, K] -> [B, S, H, K]: head h gets key/value head h // (H / Hkv)."""
    return jnp.repeat(x, q.shape[2] // x.shape[2], axis=2)


def pallas_tpu(q, k, v, *, causal=False, segment_ids=None, kv_segment_ids=None, bias=None, scale=None,
               interpret=False):
    """``jax.experimental.pallas.ops.tpu.flash_attention`` on our layout ([B, H, T, K] inside)."""
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_fa
    B, T, H, K = q.shape
    S = k.shape[1]
    scale = 1.0 / math.sqrt(K) if scale is None else scale
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, _repeat_kv(q, k), _repeat_kv(q, v)))
    # This kernel computes (q·kᵀ + ab)·sm_scale (the bias goes in before the scale), so ab = bias / scale.
    ab = None if bias is None else jnp.broadcast_to(jnp.asarray(bias, q.dtype) / scale, (B, H, T, S))
    seg = None
    if segment_ids is not None:
        kv = segment_ids if kv_segment_ids is None else kv_segment_ids
        seg = tpu_fa.SegmentIds(jnp.asarray(segment_ids, jnp.int32), jnp.asarray(kv, jnp.int32))
    b = PALLAS_BLOCK
    blocks = tpu_fa.BlockSizes(block_q=b, block_k_major=b, block_k=b, block_b=1, block_q_major_dkv=b,
                               block_k_major_dkv=b, block_k_dkv=b, block_q_dkv=b, block_k_major_dq=b,
                               block_k_dq=b, block_q_dq=b)

    def run(qt, kt, vt, ab, seg):
        return tpu_fa.flash_attention(qt, kt, vt, ab, seg, causal=causal, sm_scale=scale, block_sizes=blocks)

    if interpret:
        run = _interpreted(run, pltpu.force_tpu_interpret_mode)
    return jnp.swapaxes(run(qt, kt, vt, ab, seg), 1, 2)


def _interpreted(fn, mode):
    """fn with its forward and backward Pallas calls bound inside the interpret-mode context ``mode``.

    The context has to hold when each ``pallas_call`` is traced, and the kernel's own backward is
    traced later, by the caller's ``jax.grad``: so re-enter it in a custom VJP's backward.
    """
    @jax.custom_vjp
    def f(*args):
        with mode():
            return fn(*args)

    def fwd(*args):
        with mode():
            return jax.vjp(fn, *args)

    def bwd(vjp, g):
        with mode():
            return vjp(g)

    f.defvjp(fwd, bwd)
    return f


def pallas_gpu(q, k, v, *, causal=False, segment_ids=None, kv_segment_ids=None, bias=None, scale=None,
               interpret=False):
    """``jax.experimental.pallas.ops.gpu.attention.mha`` (Triton) on our layout (it is [B, T, H, K] too)."""
    from jax.experimental.pallas.ops.gpu import attention as gpu_fa
    if bias is not None:
        raise AttentionBackendError("attention implementation 'pallas' (gpu kernel): the Triton kernel takes no bias")
    del kv_segment_ids    # pallas_unsupported checked it equals segment_ids
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    seg = None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
    return gpu_fa.mha(q, _repeat_kv(q, k), _repeat_kv(q, v), seg, sm_scale=scale, causal=causal,
                      interpret=interpret)


def attend_causal(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "chunks", chunks: int = 1,
                  dropout=None, segment_ids: jax.Array | None = None) -> jax.Array:
    """The models' one entry to causal self-attention, q [B, T, H, K], k/v [B, T, Hkv, K].

    ``impl="chunks"``: ``lineage_jax.nn.attention.causal_attention`` (query chunks; the only kernel
    with attention dropout); any other name is a kernel of ``attention`` above (``flash``:
    blockwise with O(T) memory; ``auto``: cuDNN / Pallas where the device has them).
    ``segment_ids`` [B, T] (packed sequences): a query sees only keys of its own segment."""
    with jax.named_scope(f"attention_{impl}"):
        if impl == "chunks":
            G = q.shape[2] // k.shape[2]
            if G > 1:   # grouped-query: query head h reads key/value head h // G
                k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
            return causal_attention(q, k, v, chunks=chunks, dropout=dropout, segment_ids=segment_ids)
        return attention(q, k, v, causal=True, implementation=impl, segment_ids=segment_ids).astype(q.dtype)
