"""PagedAttention (Kwon et al. 2023): the allocator's free list and reference counts, copy-on-write,
attention through a block table equal to attention over the contiguous cache, and the model run
against a paged pool (scattered, permuted blocks) equal to the full forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lineage_jax.config import load_config
from lineage_jax.decode import paged as pg
from lineage_jax.models import build
from lineage_jax.nn import cached_attention

SMALL = ["model.layers=2", "model.width=32", "model.heads=2", "model.context=24", "model.attn_chunks=2"]


def test_allocator_free_list_and_reference_counts():
    a = pg.BlockAllocator(3)
    b0, b1 = a.allocate(), a.allocate()
    assert (b0, b1) == (0, 1) and a.num_free == 1 and a.refcount.tolist() == [1, 1, 0]
    a.fork(b0)
    a.free(b0)
    assert a.num_free == 1 and a.refcount[b0] == 1           # still held by the other sharer
    a.free(b0)
    assert a.num_free == 2 and a.allocate() == b0            # freed blocks are reused first
    a.allocate()
    with pytest.raises(pg.PagedError, match="out of KV blocks"):
        a.allocate()
    a.free(b1)
    with pytest.raises(pg.PagedError, match="freed twice"):
        a.free(b1)
    with pytest.raises(pg.PagedError, match="is free"):
        a.fork(b1)


def test_copy_on_write_only_for_shared_blocks():
    a = pg.BlockAllocator(8)
    prompt = pg.SeqBlocks(a, 4)
    prompt.grow_to(6)                                        # 6 tokens: one full block, one half-full
    assert prompt.blocks == [0, 1]
    other = prompt.fork()
    assert other.blocks == [0, 1] and a.refcount[:2].tolist() == [2, 2]
    assert other.ensure(6) == (1, 2)                         # writing into the shared half block: copy it
    assert other.blocks == [0, 2] and a.refcount[:3].tolist() == [2, 1, 1]
    assert prompt.ensure(6) is None                          # now the only holder of block 1: write in place
    assert prompt.ensure(8) is None and prompt.blocks == [0, 1, 3]   # a new block at the boundary
    prompt.release()
    other.release()
    assert a.num_free == 8 and not a.refcount.any()


def _scatter_into_pool(k, tables, num_blocks, bs):
    """Contiguous k [B, C, H, K] laid out into pool blocks named by tables [B, nb]."""
    B, C = k.shape[:2]
    pool = np.zeros((num_blocks, bs, *k.shape[2:]), np.float32)
    for b in range(B):
        for j, blk in enumerate(tables[b]):
            pool[blk] = k[b, j * bs:(j + 1) * bs]
    return jnp.asarray(pool)


def test_paged_attention_equals_contiguous_attention():
    rng = np.random.default_rng(0)
    B, C, H, K, bs, T = 3, 16, 2, 8, 4, 2
    nb, N = C // bs, 20
    k, v = (rng.normal(size=(B, C, H, K)).astype(np.float32) for _ in range(2))
    q = jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32)
    tables = rng.permutation(N)[:B * nb].reshape(B, nb).astype(np.int32)   # scattered, out of order
    pos = jnp.asarray([[3, 4], [9, 10], [14, 15]], jnp.int32)
    pool_k, pool_v = _scatter_into_pool(k, tables, N, bs), _scatter_into_pool(v, tables, N, bs)
    got = jax.jit(pg.paged_attention)(q, pool_k, pool_v, jnp.asarray(tables), pos)
    want = cached_attention(q, jnp.asarray(k), jnp.asarray(v), pos)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # The same through a reference written from the definition: softmax over slots <= position.
    for b in range(B):
        for t in range(T):
            p = int(pos[b, t])
            s = np.einsum("hk,shk->hs", np.asarray(q[b, t]), k[b, :p + 1]) / np.sqrt(K)
            w = np.exp(s - s.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            np.testing.assert_allclose(got[b, t], np.einsum("hs,shk->hk", w, v[b, :p + 1]), atol=1e-5)


def test_copy_blocks_and_dropped_writes():
    pool = pg.PagedKV(*(jnp.arange(2 * 4 * 2 * 1 * 1, dtype=jnp.float32).reshape(2, 4, 2, 1, 1) + i
                        for i in (0, 100)))
    out = pg.copy_blocks(pool, jnp.asarray([1, 0]), jnp.asarray([3, 4]))   # dst 4 = N: no-op
    np.testing.assert_array_equal(out.k[:, 3], pool.k[:, 1])
    np.testing.assert_array_equal(out.v[:, :3], pool.v[:, :3])
    ids = pg.write_ids(jnp.asarray([[2, -1]]), jnp.asarray([[1, 2, 3]]), jnp.asarray([[True, True, False]]), 2, 4)
    assert ids.tolist() == [[5, 8, 8]]                 # block 2 slot 1; unassigned and invalid -> N*bs


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_paged_forward_equals_the_contiguous_cache(arch):
    """Prefill two ragged prompts into permuted blocks, then decode every later position one token at a
    time: the logits equal the contiguous KV cache's (and, for GPT-2, the full forward pass)."""
    from lineage_jax.decode import kv_cache as kc
    extra = ["model.arch=llama", "model.kv_heads=1", "model.scan_layers=true"] if arch == "llama" else []
    cfg = load_config("tiny", [*SMALL, *extra]).model
    model = build(cfg)
    B, C, bs = 2, cfg.context, 4
    toks = jax.random.randint(jax.random.key(1), (B, C), 0, cfg.vocab_size)
    params = jax.jit(model.init)(jax.random.key(0), toks)["params"]     # jitted: one compile, not one per op
    full = jax.jit(model.apply)({"params": params}, toks)
    nb, N = C // bs, 2 * (C // bs) + 3
    tables = jnp.asarray(np.random.default_rng(2).permutation(N)[:B * nb].reshape(B, nb), jnp.int32)
    pool = pg.init_pool(cfg, N, bs)
    assert pool.k.shape == (cfg.layers, N, bs, cfg.kv_heads or cfg.heads, cfg.width // cfg.heads)
    lengths = np.array([5, 11])
    P = int(lengths.max())
    pos = jnp.broadcast_to(jnp.arange(P), (B, P))
    prompts = jnp.where(pos < lengths[:, None], toks[:, :P], 0)
    fwd = jax.jit(pg.paged_forward, static_argnums=0)
    prefill, decode_step = (jax.jit(f, static_argnums=0) for f in (kc.prefill, kc.decode_step))
    logits, pool = fwd(model, params, pool, tables, prompts, pos, pos < lengths[:, None])
    want, cache = prefill(model, params, kc.init_cache(cfg, B), prompts, lengths)
    for b in range(B):
        np.testing.assert_allclose(logits[b, :lengths[b]], want[b, :lengths[b]], atol=1e-5)
        if arch == "gpt2":
            np.testing.assert_allclose(logits[b, :lengths[b]], full[b, :lengths[b]], atol=1e-5)
    rows = jnp.arange(B)
    while int(cache.lengths.min()) < C:
        cur = cache.lengths
        step, pool = fwd(model, params, pool, tables, toks[rows, cur][:, None], cur[:, None], jnp.ones((B, 1), bool))
        want, cache = decode_step(model, params, cache, toks[rows, cur])
        np.testing.assert_allclose(step[:, 0], want, atol=1e-5)
        if arch == "gpt2":
            np.testing.assert_allclose(step[:, 0], full[rows, cur], atol=1e-5)
