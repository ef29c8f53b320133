"""PagedAttention: the KV cache in fixed-size blocks reached through a block table (Kwon et al. 2023).

Kwon et al. 2023 ("Efficient Memory Management for Large Language Model Serving with
PagedAttention", §4.1-4.4): instead of reserving a contiguous max-length region per sequence,
keys and values live in a pool of physical blocks of ``block_size`` token slots. Each sequence
owns a *block table*: logical block j (positions j·bs .. j·bs + bs − 1) is physical block
``table[j]``. A block is allocated only when a sequence first writes into it, so at most
``block_size − 1`` slots per sequence sit allocated but unused (§4.2). Blocks carry reference
counts: the n samples of one prompt share its prompt blocks, and a sample that writes into a
block others still hold first copies it (copy-on-write, §4.4 "parallel sampling").

This file holds both halves:

* host side: ``BlockAllocator`` (free list + reference counts) and ``SeqBlocks`` (one sequence's
  table; ``ensure`` allocates or copies-on-write the block a write needs);
* device side, pure and jit-able at static shapes: the pool ``PagedKV`` with k, v
  ``[L, N, bs, Hkv, K]``; ``gather_kv`` (read a sequence's keys/values through its table),
  ``paged_attention``, ``scatter_kv`` (write new keys/values through the table), ``copy_blocks``
  and ``paged_forward``, one model call against the pool.

``paged_forward`` runs the real model code: it gathers each row's blocks into a [L, B, nb·bs, Hkv, K]
view, calls ``model.apply(..., cache=view, positions=)`` (the contiguous cached path of
``models/gpt.py``, whose attention masks slot s > position), and scatters the keys and values the
model wrote back into the pool through the table. Attention therefore reads keys and values
through the block table, as PagedAttention's kernel does, with the gather written as an XLA gather
instead of a fused kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.decode.kv_cache import KVCache
from lineage_jax.nn import cached_attention

__all__ = ["PagedError", "PagedKV", "BlockAllocator", "SeqBlocks", "init_pool", "slot_ids", "gather_kv",
           "write_ids", "scatter_kv", "copy_blocks", "paged_attention", "paged_forward", "blocks_for"]


class PagedError(ValueError):
    """A paged-cache request that cannot be served (out of blocks, bad sizes)."""


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks that hold ``tokens`` slots: ceil(tokens / block_size)."""
    return -(-int(tokens) // int(block_size))


# --------------------------------------------------------------------------- host side

class BlockAllocator:
    """Physical blocks 0..N−1: a free list and a reference count per block (Kwon et al. §4.2, §4.4).

    ``allocate`` pops a free block (refcount 1), ``fork`` adds a holder, ``free`` drops one and
    returns the block to the free list when none is left. The free list is last-in first-out, so a
    freed block is the next one handed out (reuse is immediate and visible in ``allocations``).
    """

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise PagedError(f"num_blocks={num_blocks}: must be at least 1")
        self.num_blocks = int(num_blocks)
        self.refcount = np.zeros(self.num_blocks, np.int64)
        self._free = list(range(self.num_blocks - 1, -1, -1))   # pop() hands out 0, 1, 2, ...
        self.allocations: list[int] = []                         # every block id handed out, in order

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_allocated(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise PagedError(f"out of KV blocks: all {self.num_blocks} are in use")
        b = self._free.pop()
        self.refcount[b] = 1
        self.allocations.append(b)
        return b

    def fork(self, block: int) -> int:
        if self.refcount[block] < 1:
            raise PagedError(f"block {block} is free; cannot share it")
        self.refcount[block] += 1
        return block

    def free(self, block: int) -> None:
        if self.refcount[block] < 1:
            raise PagedError(f"block {block} freed twice")
        self.refcount[block] -= 1
        if self.refcount[block] == 0:
            self._free.append(block)


class SeqBlocks:
    """One sequence's block table: logical block j -> physical block ``blocks[j]``."""

    def __init__(self, allocator: BlockAllocator, block_size: int, blocks: list[int] | None = None):
        self.alloc, self.bs = allocator, int(block_size)
        self.blocks: list[int] = list(blocks or [])

    def grow_to(self, tokens: int) -> None:
        """Allocate fresh blocks until ``tokens`` slots are covered (a prompt's prefill)."""
        while len(self.blocks) < blocks_for(tokens, self.bs):
            self.blocks.append(self.alloc.allocate())

    def fork(self) -> "SeqBlocks":
        """A second table sharing every block (reference counts + 1): a new sample of the same prompt."""
        return SeqBlocks(self.alloc, self.bs, [self.alloc.fork(b) for b in self.blocks])

    def ensure(self, position: int) -> tuple[int, int] | None:
        """Make the block holding ``position`` present and exclusively ours before a write.

        Returns ``(src, dst)`` when the block was shared and has been copied on write (the caller
        copies the device contents of src into dst), else None.
        """
        j = position // self.bs
        while len(self.blocks) <= j:
            self.blocks.append(self.alloc.allocate())
        old = self.blocks[j]
        if self.alloc.refcount[old] > 1:        # shared with another sample: copy, then write
            new = self.alloc.allocate()
            self.alloc.free(old)
            self.blocks[j] = new
            return old, new
        return None

    def release(self) -> None:
        for b in self.blocks:
            self.alloc.free(b)
        self.blocks = []

    def row(self, width: int) -> np.ndarray:
        """The table as a fixed-width int32 row; unassigned entries are −1."""
        if len(self.blocks) > width:
            raise PagedError(f"{len(self.blocks)} blocks exceed the table width {width}")
        out = np.full((width,), -1, np.int32)
        out[:len(self.blocks)] = self.blocks
        return out


# --------------------------------------------------------------------------- device side

class PagedKV(NamedTuple):
    k: jax.Array   # [L, N, bs, Hkv, K]
    v: jax.Array   # [L, N, bs, Hkv, K]


def init_pool(cfg, num_blocks: int, block_size: int, dtype=None) -> PagedKV:
    """A zeroed pool of ``num_blocks`` blocks of ``block_size`` slots for a model config."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (cfg.layers, num_blocks, block_size, cfg.kv_heads or cfg.heads, cfg.width // cfg.heads)
    return PagedKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def slot_ids(tables: jax.Array, block_size: int) -> jax.Array:
    """tables [B, nb] -> flat pool slot of each logical slot [B, nb·bs] (unassigned blocks read block 0)."""
    B, nb = tables.shape
    s = jnp.arange(nb * block_size)
    return jnp.maximum(tables, 0)[:, s // block_size] * block_size + s % block_size


def gather_kv(pool_x: jax.Array, tables: jax.Array) -> jax.Array:
    """pool [L, N, bs, H, K] read through tables [B, nb] -> contiguous view [L, B, nb·bs, H, K]."""
    L, N, bs = pool_x.shape[:3]
    return pool_x.reshape(L, N * bs, *pool_x.shape[3:])[:, slot_ids(tables, bs)]


def write_ids(tables: jax.Array, positions: jax.Array, valid: jax.Array, block_size: int, num_blocks: int):
    """Flat pool slots [B, T] that positions [B, T] write to; invalid (or unassigned) -> N·bs (dropped)."""
    j = jnp.clip(positions // block_size, 0, tables.shape[1] - 1)
    blk = jnp.take_along_axis(tables, j, axis=1)
    ok = valid & (blk >= 0) & (positions // block_size < tables.shape[1])
    return jnp.where(ok, blk * block_size + positions % block_size, num_blocks * block_size)


def scatter_kv(pool_x: jax.Array, new: jax.Array, ids: jax.Array) -> jax.Array:
    """Write new [L, B, T, H, K] into pool [L, N, bs, H, K] at flat slots ids [B, T] (out of range: dropped)."""
    L, N, bs = pool_x.shape[:3]
    flat = pool_x.reshape(L, N * bs, *pool_x.shape[3:])
    flat = flat.at[:, ids.reshape(-1)].set(new.reshape(L, -1, *new.shape[3:]).astype(flat.dtype), mode="drop")
    return flat.reshape(pool_x.shape)


def copy_blocks(pool: PagedKV, src: jax.Array, dst: jax.Array) -> PagedKV:
    """Copy-on-write: physical block src[i] -> dst[i] in every layer; dst out of range (e.g. N) is a no-op."""
    return PagedKV(*(x.at[:, dst].set(x[:, jnp.clip(src, 0, x.shape[1] - 1)], mode="drop") for x in pool))


def paged_attention(q: jax.Array, pool_k: jax.Array, pool_v: jax.Array, tables: jax.Array,
                    positions: jax.Array) -> jax.Array:
    """One layer's attention through block tables: q [B, T, H, K], pool_k/v [N, bs, H, K], tables [B, nb].

    Query t of row b attends to its sequence's slots s <= positions[b, t], read through the table.
    """
    k = gather_kv(pool_k[None], tables)[0]
    v = gather_kv(pool_v[None], tables)[0]
    return cached_attention(q, k.astype(q.dtype), v.astype(q.dtype), positions)


def paged_forward(model, params, pool: PagedKV, tables: jax.Array, tokens: jax.Array, positions: jax.Array,
                  valid: jax.Array):
    """Run the model on tokens [B, T] at positions [B, T] against the paged pool -> (logits [B, T, V], pool).

    The keys and values of the tokens where ``valid`` [B, T] is true are written into the pool
    through ``tables`` [B, nb]; the rest (padding, empty decode slots) are dropped. Each row must
    own (refcount 1) the blocks it writes: ``SeqBlocks.ensure`` before the call.
    """
    N, bs = pool.k.shape[1:3]
    view = KVCache(gather_kv(pool.k, tables), gather_kv(pool.v, tables), jnp.zeros(tokens.shape[:1], jnp.int32))
    logits, view = model.apply({"params": params}, tokens, cache=view, positions=positions)
    b = jnp.arange(tokens.shape[0])[:, None]
    ids = write_ids(tables, positions, valid, bs, N)
    pool = PagedKV(scatter_kv(pool.k, view.k[:, b, positions], ids), scatter_kv(pool.v, view.v[:, b, positions], ids))
    return logits, pool
