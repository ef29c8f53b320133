"""GPT-2 (Radford et al. 2019): a decoder-only Transformer with pre-LayerNorm, GELU,
learned positions and input/output embeddings tied (Press & Wolf 2017).

Used purely: ``params = GPT(cfg).init(key, tokens)["params"]`` and
``logits = GPT(cfg).apply({"params": params}, tokens)``. For decoding with a KV cache (Pope et al.
2022 describe the inference cost it saves), pass the cache pytree and per-token positions
explicitly: ``logits, cache = GPT(cfg).apply({"params": params}, tokens, cache=cache,
positions=pos)`` (``lineage_jax/decode/kv_cache.py``); without ``cache`` the program is unchanged. Every parameter carries logical
axis names (``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``, ``position``, and ``layers``
for the scanned stack); the model knows nothing of meshes.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.config import ModelConfig, ffn_dim
from lineage_jax.attention.backend import attend_causal
from lineage_jax.moe import MoEFeedForward
from lineage_jax.nn import (Dense, GeluMLP, LayerNorm, cached_attention, constrain, hooks, layer_norm, linear,
                           param)


class CausalSelfAttention(nn.Module):
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, kv=None, positions=None, segment_ids=None):  # [B, T, D]
        """x -> y; with ``kv = (k_cache, v_cache)`` [B, C, H, K] and ``positions`` [B, T]: (y, new kv).
        ``segment_ids`` [B, T] (packed rows, no cache): attend within one's own segment only."""
        c = self.cfg
        H, K = c.heads, c.width // c.heads
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        proj = lambda name: Dense((H, K), ("embed", "heads", "kv"), init_std=c.init_std,
                                  dtype=dtype, param_dtype=pdtype, name=name)
        x = hooks().dense_in(x, ("embed", "heads", "kv"), 1)   # once for q, k, v (Megatron f / SP gather)
        q, k, v = (constrain(proj(n)(x), ("batch", "length", "heads", "kv")) for n in ("query", "key", "value"))
        drop = None
        if c.dropout > 0 and not self.deterministic:
            drop = lambda p: nn.Dropout(c.dropout, deterministic=False)(p)
        if kv is None:
            y = attend_causal(q, k, v, impl=c.attn_impl, chunks=c.attn_chunks, dropout=drop,
                              segment_ids=segment_ids)   # [B, T, H, K]
        else:  # write this call's keys/values at their positions, attend to every slot <= the query's
            b = jnp.arange(x.shape[0])[:, None]
            kv = (kv[0].at[b, positions].set(k.astype(kv[0].dtype), mode="drop"),
                  kv[1].at[b, positions].set(v.astype(kv[1].dtype), mode="drop"))
            y = cached_attention(q, kv[0].astype(k.dtype), kv[1].astype(v.dtype), positions)
        # Residual projections scaled by 1/√(2L) at init (GPT-2 §2.3).
        out = Dense((c.width,), ("heads", "kv", "embed"), in_axes=2, init_std=c.init_std / math.sqrt(2 * c.layers),
                    dtype=dtype, param_dtype=pdtype, name="out")(y)
        out = nn.Dropout(c.dropout, deterministic=self.deterministic)(out)
        return out if kv is None else (out, kv)


def gelu_mlp(cfg: ModelConfig, deterministic: bool = True, name: str = "mlp") -> GeluMLP:
    """GPT-2's feed-forward: ``nn.GeluMLP`` at width ``ffn_dim``, the projection's init scaled by 1/√(2L)."""
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    return GeluMLP(ffn_dim(cfg), cfg.width, init_std=cfg.init_std, proj_std=cfg.init_std / math.sqrt(2 * cfg.layers),
                   dropout=cfg.dropout, deterministic=deterministic, dtype=dtype, param_dtype=pdtype, name=name)


class MoEMLP(nn.Module):
    """The feed-forward of an MoE block (Shazeer 2017 / GShard / Switch, ``lineage_jax/moe``).

    Each sequence is one routing group (capacity per sequence), so the function does not
    depend on how the batch is split over devices. The routing statistics are sown into the
    ``moe`` collection: ``aux_loss`` (to add to the training loss), ``load`` [E], and
    ``dropped_fraction``.
    """
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        y, m = MoEFeedForward(c.experts, ffn_dim(c), router=c.moe_router, backend=c.moe_backend, k=c.moe_k,
                              capacity_factor=c.capacity_factor, gshard_aux_weight=c.moe_aux_weight,
                              switch_alpha=c.moe_aux_weight, activation=lambda h: jax.nn.gelu(h, approximate=True),
                              init_std=c.init_std, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                              grouped=True, name="moe")(x, self.deterministic)
        for name in ("aux_loss", "load", "dropped_fraction"):
            self.sow("moe", name, m[name])
        return nn.Dropout(c.dropout, deterministic=self.deterministic)(y)


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)): the pre-LN residual block (Xiong et al. 2020).

    ``moe``: the MLP is a mixture of experts (``MoEMLP``)."""
    cfg: ModelConfig
    deterministic: bool = True
    moe: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, kv=None, positions=None, segment_ids=None):
        """(x, None) -> (x, None); with this layer's cache ``kv = (k, v)``: (x, new kv)."""
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        attn = CausalSelfAttention(c, self.deterministic, name="attn")
        a = layer_norm("ln1", c.layernorm_eps, dtype, pdtype)(x)
        if kv is None:
            x = x + attn(a, segment_ids=segment_ids)
        else:
            y, kv = attn(a, kv, positions)
            x = x + y
        mlp = MoEMLP(c, self.deterministic, name="mlp") if self.moe else gelu_mlp(c, self.deterministic)
        x = x + mlp(layer_norm("ln2", c.layernorm_eps, dtype, pdtype)(x))
        return constrain(x, ("batch", "seq", "embed")), kv


class MoEGroup(nn.Module):
    """``moe_every`` consecutive blocks, the last with an MoE feed-forward: the unit scanned when
    MoE alternates with dense layers (``model.moe_every = 2``: dense, MoE, dense, MoE, ...)."""
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, kv=None, positions=None, segment_ids=None):
        n = self.cfg.moe_every
        new = []
        for i in range(n):
            blk = Block(self.cfg, self.deterministic, moe=i == n - 1, name=f"block_{i}")
            x, kv_i = (blk(x, segment_ids=segment_ids) if kv is None
                       else blk(x, (kv[0][i], kv[1][i]), positions))
            new.append(kv_i)
        if kv is None:
            return x, None
        return x, (jnp.stack([k for k, _ in new]), jnp.stack([v for _, v in new]))


REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class GPT(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, deterministic: bool = True, cache=None, positions=None,
                 segment_ids=None):
        """tokens [B, T] int -> logits [B, T, V] in the compute dtype (V = vocab padded to vocab_multiple).

        Packed rows (several documents per row, T5-style): ``segment_ids`` [B, T] keep each token's
        attention inside its own document and ``positions`` [B, T] (restarting at 0 per document)
        pick its position embedding, so a packed row computes what each document would alone.

        With ``cache`` (a ``KVCache``: k, v [L, B, C, H, K]) and ``positions`` [B, T] (each token's
        index in its sequence, < context): returns ``(logits, cache)`` with this call's keys and values
        written at those positions; a token attends to every cache slot at or before its position.
        """
        c = self.cfg
        if cache is not None:
            return self._cached(tokens, cache, positions)
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        T = tokens.shape[-1]
        if T > c.context:
            raise ValueError(f"sequence length {T} exceeds model.context={c.context}")
        init = nn.initializers.normal(c.init_std)
        V = padded_vocab(c)
        h = hooks()   # identities unless an explicit (shard_map) form installed its collectives
        wte = param(self, "wte", init, (V, c.width), pdtype, ("vocab", "embed"))
        wpe = param(self, "wpe", init, (c.context, c.width), pdtype, ("position", "embed"))
        if positions is not None:
            positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), tokens.shape)
        x = (h.embed(wte, tokens) + h.positions(wpe, T, positions)).astype(dtype)
        x = constrain(nn.Dropout(c.dropout, deterministic=deterministic)(x), ("batch", "seq", "embed"))

        remat = (lambda m: nn.remat(m, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
                 if c.remat != "none" else m)
        if c.scan_layers:   # with MoE, the scanned unit is a group of moe_every blocks
            unit, n_units = (MoEGroup, c.layers // c.moe_every) if c.moe_every else (Block, c.layers)
            stack = nn.scan(remat(unit), length=n_units, variable_axes={"params": 0, "moe": 0},
                            split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(c, deterministic, name="blocks")(x, None, None, segment_ids)
        else:
            for i in range(c.layers):
                x, _ = remat(Block)(c, deterministic, is_moe(c, i), name=f"blocks_{i}")(x, None, None, segment_ids)

        x = layer_norm("ln_f", c.layernorm_eps, dtype, pdtype)(x)
        x = h.dense_in(x, ("embed", "vocab"), 1)
        logits = constrain(linear(x, wte.astype(dtype), True), ("batch", "length", "vocab"))  # tied: x · Eᵀ
        if V > c.vocab_size:  # padding rows are never predicted
            logits = jnp.where(h.index(logits.shape[-1], "vocab") < c.vocab_size, logits, jnp.finfo(logits.dtype).min)
        return logits


    def _cached(self, tokens, cache, positions):
        """The KV-cache path (inference only: deterministic, no remat, default hooks)."""
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if positions is None:
            raise ValueError("positions [B, T] are required with a cache")
        positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), tokens.shape)
        init = nn.initializers.normal(c.init_std)
        V = padded_vocab(c)
        wte = param(self, "wte", init, (V, c.width), pdtype, ("vocab", "embed"))
        wpe = param(self, "wpe", init, (c.context, c.width), pdtype, ("position", "embed"))
        x = (jnp.take(wte, tokens, axis=0) + jnp.take(wpe, jnp.clip(positions, 0, c.context - 1), axis=0)).astype(dtype)
        if c.scan_layers:
            unit, n = (MoEGroup, c.moe_every) if c.moe_every else (Block, 1)
            per_unit = lambda a: a.reshape(c.layers // n, n, *a.shape[1:]) if c.moe_every else a
            stack = nn.scan(unit, length=c.layers // n, variable_axes={"params": 0, "moe": 0},
                            split_rngs={"params": True}, in_axes=(0, nn.broadcast),
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, (k, v) = stack(c, True, name="blocks")(x, (per_unit(cache.k), per_unit(cache.v)), positions)
            k, v = k.reshape(cache.k.shape), v.reshape(cache.v.shape)
        else:
            ks, vs = [], []
            for i in range(c.layers):
                x, (ki, vi) = Block(c, True, is_moe(c, i), name=f"blocks_{i}")(x, (cache.k[i], cache.v[i]), positions)
                ks.append(ki)
                vs.append(vi)
            k, v = jnp.stack(ks), jnp.stack(vs)
        x = layer_norm("ln_f", c.layernorm_eps, dtype, pdtype)(x)
        logits = linear(x, wte.astype(dtype), True)
        if V > c.vocab_size:
            logits = jnp.where(jnp.arange(V) < c.vocab_size, logits, jnp.finfo(logits.dtype).min)
        return logits, cache._replace(k=k, v=v)


class PipelineParts(NamedTuple):
    """A decoder cut where a pipeline cuts it (``lineage_jax/train/pipeline.py``): ``shared`` is the
    parameters less ``blocks`` (GPT-2: wte, wpe, ln_f; Llama: wte, norm, lm_head when untied),
    ``layer`` one slice of the scanned stack (a block, or with MoE a group of ``moe_every`` blocks).

    ``embed(shared, tokens, positions=None) -> x`` [B, T, D]; ``layer(p, x, segment_ids=None,
    positions=None) -> (x, moe)`` with ``moe`` the unit's routing statistics (``unit_moe_stats``; {}
    for a dense unit); ``head(shared, x) -> logits``. Composed, they compute what the model's
    ``__call__`` does for a deterministic batch, packed rows included (``segment_ids`` and
    restarting ``positions`` [B, T]), with the same modules and hooks, so a shard_map form's
    collectives apply inside each piece. ``moe_layers``: MoE layers per unit (0 dense)."""
    embed: Callable
    layer: Callable
    head: Callable
    moe_layers: int = 0


def read_param(w, axes):
    """A parameter as ``nn.hooks.param`` hands it to the module: through the hook, then constrained."""
    return constrain(hooks().param(w, axes), axes)


def unit_moe_stats(sown) -> dict:
    """The ``moe`` collection one stack unit sowed -> {"aux": Σ aux losses, "load": Σ per-layer
    normalised loads [E], "dropped": Σ dropped fractions}: sums, so a pipeline can add them over
    units, chunks and microbatches and divide once ({} for a dense unit)."""
    flat = flax.traverse_util.flatten_dict(sown.get("moe", {}))
    pick = lambda name: [leaf for key, vals in flat.items() if key[-1] == name for leaf in vals]  # noqa: E731
    aux, load, dropped = pick("aux_loss"), pick("load"), pick("dropped_fraction")
    if not aux:
        return {}
    load = jnp.stack([jnp.reshape(x, (-1,)) for x in load])                            # [MoE layers, E]
    load = load / jnp.maximum(jnp.sum(load, axis=-1, keepdims=True), 1.0)
    return {"aux": sum(jnp.sum(a) for a in aux).astype(jnp.float32), "load": jnp.sum(load, axis=0),
            "dropped": sum(jnp.sum(d) for d in dropped).astype(jnp.float32)}


def pipeline_parts(c: ModelConfig) -> PipelineParts:
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    V = padded_vocab(c)
    unit = MoEGroup(c, True) if c.moe_every else Block(c, True)
    ln_f = LayerNorm(epsilon=c.layernorm_eps, dtype=dtype, param_dtype=pdtype)

    def embed(shared, tokens, positions=None):
        h, T = hooks(), tokens.shape[-1]
        wte, wpe = read_param(shared["wte"], ("vocab", "embed")), read_param(shared["wpe"], ("position", "embed"))
        x = (h.embed(wte, tokens) + h.positions(wpe, T, positions)).astype(dtype)
        return constrain(x, ("batch", "seq", "embed"))

    def layer(p, x, segment_ids=None, positions=None):   # GPT-2's positions were added by embed
        (y, _), sown = unit.apply({"params": p}, x, None, None, segment_ids, mutable=["moe"])
        return y, unit_moe_stats(sown)

    def head(shared, x):
        h = hooks()
        x = h.dense_in(ln_f.apply({"params": shared["ln_f"]}, x), ("embed", "vocab"), 1)
        logits = constrain(linear(x, read_param(shared["wte"], ("vocab", "embed")).astype(dtype), True),
                           ("batch", "length", "vocab"))
        return mask_padded_vocab(c, logits)

    return PipelineParts(embed, layer, head, 1 if c.moe_every else 0)


def mask_padded_vocab(c: ModelConfig, logits):
    """Padding rows of the vocabulary are never predicted (their logits set to the dtype's minimum)."""
    if padded_vocab(c) > c.vocab_size:
        logits = jnp.where(hooks().index(logits.shape[-1], "vocab") < c.vocab_size, logits,
                           jnp.finfo(logits.dtype).min)
    return logits


def is_moe(c: ModelConfig, i: int) -> bool:
    """Is block ``i`` an MoE block? With ``moe_every = n``: blocks n-1, 2n-1, ... (0-based)."""
    return bool(c.moe_every) and (i + 1) % c.moe_every == 0


def padded_vocab(c: ModelConfig) -> int:
    """Embedding rows: vocab_size rounded up to vocab_multiple (so tensor parallelism can split them)."""
    return -(-c.vocab_size // c.vocab_multiple) * c.vocab_multiple


def count_params(params) -> int:
    return sum(int(math.prod(p.shape)) for p in jax.tree.leaves(params))
