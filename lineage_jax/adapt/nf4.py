"""4-bit NormalFloat (QLoRA, Dettmers et al. 2023 §3): the code book, block-wise quantisation,
double quantisation of the block constants, and two codes per byte.

**The code book.** Pretrained weights are close to N(0, σ); scaled by their block's absmax they
lie in [−1, 1], and a code whose values are equally spaced *quantiles* of N(0, 1) gives each of
the 16 codes the same share of the weights (information-theoretically optimal for normal data).
Plain quantiles cannot hold an exact zero with 2^k values, so the paper builds the two halves
apart: 2^(k−1) = 8 positive values from quantiles of N(0, 1) at probabilities evenly spaced from
δ up to ½, and 2^(k−1) − 1 = 7 negative ones from δ' … ½, their shared ½ end being zero; δ is
½·(1/30 + 1/32) (the outermost quantile: between the 1/(2·15) and 1/(2·16) tail probabilities
the 15 and 16 equal parts of the halves would give), so the extremes are finite. Normalised by
the largest value, both ends are ±1 and zero is exact (padding and zeros quantise without error).

**Block-wise absmax** (block 64): x ≈ absmax_b · NF4[code], code = the nearest value to x/absmax_b.
**Double quantisation** (§3, "Double Quantization"): the float32 absmax constants cost 32/64 = 0.5
bits per parameter; quantising them to 8 bits in blocks of 256 (after subtracting their mean, they
are all positive) costs 8/64 + 32/(64·256) = 0.127. The paper's second level uses 8-bit floats
(bitsandbytes' dynamic map); here it is linear int8 absmax on the centred constants — the same
bits, a simpler code book, an error far below the 4-bit one it scales.
"""
from __future__ import annotations

from statistics import NormalDist

import jax.numpy as jnp
import numpy as np

BLOCK = 64          # weights per absmax constant (the paper's block size for NF4)
BLOCK2 = 256        # absmax constants per second-level constant (double quantisation)
OFFSET = 1 - 0.5 * (1 / 30 + 1 / 32)   # the outermost quantile probability, 1 − δ


def nf4_code_book(bits: int = 4, offset: float = OFFSET) -> np.ndarray:
    """The 2^bits NormalFloat values, ascending, in [−1, 1] with an exact zero (see module doc)."""
    half = 2 ** (bits - 1)
    ppf = NormalDist().inv_cdf
    pos = [ppf(p) for p in np.linspace(offset, 0.5, half + 1)[:-1]]        # 8 values > 0
    neg = [-ppf(p) for p in np.linspace(offset, 0.5, half)[:-1]]           # 7 values < 0
    values = np.sort(np.array(pos + [0.0] + neg, np.float64))
    return (values / values.max()).astype(np.float32)


NF4_VALUES = tuple(float(v) for v in nf4_code_book())
"""The 16 NF4 values, ascending (derived above, not pasted)."""


def nearest_code(x: jnp.ndarray, values) -> jnp.ndarray:
    """Index (uint8) of the nearest entry of an ascending code book, by the midpoints between them."""
    values = jnp.asarray(values, jnp.float32)
    mids = (values[1:] + values[:-1]) / 2
    return jnp.searchsorted(mids, x.astype(jnp.float32), side="left").astype(jnp.uint8)


def pack(codes: jnp.ndarray) -> jnp.ndarray:
    """Two 4-bit codes per byte along the last axis (even index in the high nibble, as bitsandbytes)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack: last axis {codes.shape[-1]} is odd")
    c = codes.astype(jnp.uint8).reshape(*codes.shape[:-1], -1, 2)
    return (c[..., 0] << 4) | c[..., 1]


def unpack(packed: jnp.ndarray) -> jnp.ndarray:
    """The inverse of ``pack``."""
    return jnp.stack([packed >> 4, packed & 0xF], axis=-1).reshape(*packed.shape[:-1], -1)


def blocks(x: jnp.ndarray, block: int) -> jnp.ndarray:
    """[..., n] -> [..., n/block, block]: blocks run along the last axis, so every block stays within
    one row of the kernel and the quantised arrays keep the kernel's leading axes (and shardings)."""
    if x.shape[-1] % block:
        raise ValueError(f"last axis {x.shape[-1]} is not a multiple of the block size {block}")
    return x.reshape(*x.shape[:-1], -1, block)


def quantize_blockwise(x: jnp.ndarray, values, block: int = BLOCK):
    """(codes uint8 [..., n], absmax float32 [..., n/block]) with x ≈ absmax·values[codes]."""
    xb = blocks(x.astype(jnp.float32), block)
    absmax = jnp.max(jnp.abs(xb), axis=-1)
    scaled = xb / jnp.where(absmax == 0, 1.0, absmax)[..., None]
    return nearest_code(scaled, values).reshape(x.shape), absmax


def dequantize_blockwise(codes: jnp.ndarray, absmax: jnp.ndarray, values, dtype=jnp.float32) -> jnp.ndarray:
    w = jnp.asarray(values, jnp.float32)[codes.astype(jnp.int32)]
    return (blocks(w, codes.shape[-1] // absmax.shape[-1]) * absmax[..., None]).reshape(codes.shape).astype(dtype)


def double_quantize(absmax: jnp.ndarray, block2: int = BLOCK2):
    """absmax (positive float32) -> (int8 codes, same shape; float32 scale per ``block2`` constants of
    the flattened array; float32 mean): absmax ≈ codes·scale/127 + mean."""
    flat = absmax.reshape(-1).astype(jnp.float32)
    mean = jnp.mean(flat)
    pad = (-flat.size) % block2
    centred = jnp.pad(flat - mean, (0, pad)).reshape(-1, block2)
    scale = jnp.max(jnp.abs(centred), axis=-1)
    codes = jnp.round(centred / jnp.where(scale == 0, 1.0, scale)[:, None] * 127).astype(jnp.int8)
    return codes.reshape(-1)[:flat.size].reshape(absmax.shape), scale, mean


def double_dequantize(codes: jnp.ndarray, scale: jnp.ndarray, mean: jnp.ndarray, block2: int = BLOCK2):
    idx = jnp.arange(codes.size).reshape(codes.shape) // block2
    return codes.astype(jnp.float32) * scale[idx] / 127 + mean


def bits_per_param(block: int = BLOCK, block2: int | None = BLOCK2, const_bits: int = 32) -> float:
    """Storage of the quantisation constants per parameter: 32/64 = 0.5 for float32 absmax;
    8/64 + 32/(64·256) ≈ 0.127 with double quantisation (``block2``)."""
    if block2 is None:
        return const_bits / block
    return 8 / block + const_bits / (block * block2)
