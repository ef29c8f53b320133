"""Quantised kernels as pytree leaves of a frozen base (QLoRA's storage), and the matmul that
dequantises them on the fly.

``quantize(w, "nf4")``: NF4 codes packed two per byte, absmax per block of 64 along the last
axis, double-quantised to int8 in blocks of 256 (``nf4.py``) — 4.127 bits per weight.
``quantize(w, "int8")``: int8 absmax per block of 64 (8.5 bits), the baseline. ``"int4"``: uniform
4-bit absmax (codes −7…7; 4.5 bits), what NF4 is compared with. A ``Quantized`` keeps the
kernel's leading axes, so its arrays shard like the kernel they replace.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp

from lineage_jax.adapt import nf4
from lineage_jax.config.errors import ConfigError

KINDS = ("nf4", "int8", "int4")
INT4_VALUES = tuple(i / 7 for i in range(-7, 8))          # uniform absmax code book, 15 levels
INT8_VALUES = tuple(i / 127 for i in range(-127, 128))


@flax.struct.dataclass
class Quantized:
    """A kernel of ``shape`` stored as ``codes`` (uint8: packed NF4/int4, or int8 values) and its
    block constants: ``absmax`` (float32, or int8 codes when double-quantised, with ``scale2`` and
    ``mean2``)."""
    codes: jax.Array
    absmax: jax.Array
    scale2: jax.Array | None = None
    mean2: jax.Array | None = None
    kind: str = flax.struct.field(pytree_node=False, default="nf4")
    shape: tuple = flax.struct.field(pytree_node=False, default=())
    dtype: str = flax.struct.field(pytree_node=False, default="float32")
    block: int = flax.struct.field(pytree_node=False, default=nf4.BLOCK)
    fold: int = flax.struct.field(pytree_node=False, default=1)   # trailing kernel axes flattened into blocks

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in (self.codes, self.absmax, self.scale2, self.mean2)
                   if x is not None)


def is_quantized(x) -> bool:
    return isinstance(x, Quantized)


def _values(kind: str):
    return {"nf4": nf4.NF4_VALUES, "int4": INT4_VALUES, "int8": INT8_VALUES}[kind]


def quantize(w: jax.Array, kind: str = "nf4", *, block: int = nf4.BLOCK, double: bool | None = None) -> Quantized:
    """Block-wise absmax quantisation of ``w`` along its last axis (or its last few flattened, the
    fewest whose size ``block`` divides: a [D, H, 16] query kernel blocks over H·16). ``double`` (default: on for
    nf4, as QLoRA) quantises the float32 absmax constants to int8 in blocks of 256."""
    if kind not in KINDS:
        raise ConfigError(f"quant '{kind}': allowed {', '.join(KINDS)} (or none)")
    fold = next((m for m in range(1, w.ndim + 1) if math.prod(w.shape[w.ndim - m:]) % block == 0), None)
    if fold is None:
        raise ConfigError(f"quant {kind}: a kernel of shape {tuple(w.shape)} has no trailing axes whose size is "
                          f"a multiple of the block size {block}")
    double = double if double is not None else kind == "nf4"
    codes, absmax, scale2, mean2 = _quantize(w, kind, block, fold, double)
    return Quantized(codes, absmax, scale2, mean2, kind=kind, shape=tuple(w.shape), dtype=jnp.dtype(w.dtype).name,
                     block=block, fold=fold)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _quantize(w, kind: str, block: int, fold: int, double: bool):
    """The array work of ``quantize``, one compiled program per kernel shape (eagerly it is dozens of
    small dispatches per kernel; under jit it fuses)."""
    flat = w.reshape(*w.shape[:w.ndim - fold], -1)
    codes, absmax = nf4.quantize_blockwise(flat, _values(kind), block)
    codes = nf4.pack(codes) if kind in ("nf4", "int4") else (codes.astype(jnp.int16) - 127).astype(jnp.int8)
    scale2 = mean2 = None
    if double:
        absmax, scale2, mean2 = nf4.double_quantize(absmax)
    return codes, absmax, scale2, mean2


def dequantize(q: Quantized, dtype=None) -> jax.Array:
    """The kernel again, in ``dtype`` (default: the dtype it was quantised from)."""
    return _dequantize(q, jnp.dtype(dtype or q.dtype).name)


@functools.partial(jax.jit, static_argnums=1)
def _dequantize(q: Quantized, dtype: str) -> jax.Array:
    codes = nf4.unpack(q.codes) if q.kind in ("nf4", "int4") else (q.codes.astype(jnp.int16) + 127)
    absmax = q.absmax if q.scale2 is None else nf4.double_dequantize(q.absmax, q.scale2, q.mean2)
    w = nf4.dequantize_blockwise(codes, absmax, _values(q.kind), dtype or q.dtype)
    return w.reshape(q.shape)


def qmatmul(x: jax.Array, q: Quantized, *, n_in: int = 1, dtype=jnp.float32) -> jax.Array:
    """x · W with W dequantised on the fly to the compute ``dtype`` (bf16 or f32), contracting x's last
    ``n_in`` axes with W's first ``n_in``: the QLoRA forward of one frozen kernel. Under jit the
    dequantisation fuses into the program; the 4-bit codes are what is stored between steps."""
    return matmul(x, dequantize(q, dtype), n_in=n_in, dtype=dtype)


def matmul(x: jax.Array, w: jax.Array, *, n_in: int = 1, dtype=jnp.float32) -> jax.Array:
    """x · W for a plain kernel W [*in, *out] (``n_in`` input axes), in the compute ``dtype``."""
    k_in = math.prod(w.shape[:n_in])
    lead = x.shape[:x.ndim - n_in]
    y = jnp.matmul(x.astype(dtype).reshape(*lead, k_in), w.astype(dtype).reshape(k_in, -1))
    return y.reshape(*lead, *w.shape[n_in:])


def quantize_tree(params, select, kind: str, **kw):
    """``params`` with each kernel for which ``select(path_keys, leaf)`` holds replaced by ``quantize``."""
    def fn(path, x):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        return quantize(x, kind, **kw) if select(keys, x) else x
    return jax.tree_util.tree_map_with_path(fn, params)


def bits_per_weight(q: Quantized) -> float:
    return 8 * q.nbytes() / math.prod(q.shape)


def logical_specs(q: Quantized, axes) -> Quantized:
    """PartitionSpecs for a quantised kernel with logical ``axes``: codes and absmax keep the kernel's
    names but the blocked trailing ones (flattened and shortened: left whole), the second-level
    constants are replicated."""
    P = jax.sharding.PartitionSpec
    keep = P(*tuple(axes)[:len(axes) - q.fold], None)
    return dataclasses.replace(q, codes=keep, absmax=keep,
                               scale2=None if q.scale2 is None else P(), mean2=None if q.mean2 is None else P())
