"""A Llama-style decoder (Touvron et al. 2023): the GPT-2 block with four innovations swapped in.

    RMSNorm instead of LayerNorm        Zhang & Sennrich 2019, eq. 4: x / RMS(x) · g, no mean, no bias
    SwiGLU instead of the GELU MLP      Shazeer 2020, eq. 6: (Swish(x W) ⊙ x V) W₂
    RoPE instead of learned positions   Su et al. 2021, eq. 34 (rotate-half layout, as Hugging Face Llama)
    grouped-query attention             Ainslie et al. 2023: ``kv_heads`` key/value heads, each shared
                                        by heads / kv_heads query heads

No biases anywhere; the output head is tied to the token embedding when ``cfg.tied`` (else a
separate ``lm_head`` [D, V]). Mistral is this model (sliding windows aside); Mixtral replaces
each block's MLP by a sparse mixture of SwiGLU experts (``lineage_jax/models/mixtral.py``,
``cfg.moe_every = 1``).

Same interface as ``GPT``: ``Llama(cfg).apply({"params": p}, tokens)`` -> logits [B, T, V]; with a
``KVCache`` (k, v [L, B, C, kv_heads, K]) and ``positions`` [B, T]: ``(logits, cache)``. Parameters
(every axis logically named; ``layers`` leads the scanned stack ``blocks``):

    wte                          [V, D]       vocab, embed
    blocks/attn_norm/scale       [D]          embed
    blocks/attn/query/kernel     [D, H, K]    embed, heads, kv
    blocks/attn/{key,value}/kernel [D, Hkv, K] embed, heads, kv
    blocks/attn/out/kernel       [H, K, D]    heads, kv, embed
    blocks/mlp_norm/scale        [D]          embed
    blocks/mlp/{gate,up}/kernel  [D, F]       embed, mlp
    blocks/mlp/down/kernel       [F, D]       mlp, embed
    norm/scale                   [D]          embed
    lm_head                      [D, V]       embed, vocab   (untied only)
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.attention.mha import attention as grouped_attention
from lineage_jax.attention.positions import rope_rotate_half
from lineage_jax.config import ModelConfig, ffn_dim
from lineage_jax.models.gpt import REMAT_POLICIES, PipelineParts, mask_padded_vocab, padded_vocab, read_param
from lineage_jax.models.mixtral import SparseMoE
from lineage_jax.attention.backend import attend_causal
from lineage_jax.nn import Dense, RMSNorm, SwiGLU, constrain, hooks, linear, param


def rms_norm(name: str, c: ModelConfig) -> RMSNorm:
    return RMSNorm(c.layernorm_eps, jnp.dtype(c.dtype), jnp.dtype(c.param_dtype), name=name)


class Attention(nn.Module):
    """Causal self-attention with RoPE on q and k and ``kv_heads`` key/value heads (GQA)."""
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, kv=None, positions=None, segment_ids=None):  # [B, T, D]
        c = self.cfg
        H, Hkv, K = c.heads, c.kv_heads or c.heads, c.width // c.heads
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        proj = lambda n, name: Dense((n, K), ("embed", "heads", "kv"), use_bias=False, init_std=c.init_std,
                                     dtype=dtype, param_dtype=pdtype, name=name)
        x = hooks().dense_in(x, ("embed", "heads", "kv"), 1)   # once for q, k, v (Megatron f / SP gather)
        q = constrain(proj(H, "query")(x), ("batch", "length", "heads", "kv"))
        k = constrain(proj(Hkv, "key")(x), ("batch", "length", "heads", "kv"))
        v = constrain(proj(Hkv, "value")(x), ("batch", "length", "heads", "kv"))
        pos = jnp.arange(q.shape[1]) if positions is None else positions   # [T] or [B, T]: global positions
        q, k = rope_rotate_half(q, pos, c.rope_theta), rope_rotate_half(k, pos, c.rope_theta)
        if kv is None:
            drop = None
            if c.dropout > 0 and not self.deterministic:
                drop = lambda p: nn.Dropout(c.dropout, deterministic=False)(p)
            y = attend_causal(q, k, v, impl=c.attn_impl, chunks=c.attn_chunks, dropout=drop,
                              segment_ids=segment_ids)   # [B, T, H, K]
        else:  # decode: write at the positions; grouped einsum over the cache, never copied G times
            b = jnp.arange(x.shape[0])[:, None]
            kv = (kv[0].at[b, positions].set(k.astype(kv[0].dtype), mode="drop"),
                  kv[1].at[b, positions].set(v.astype(kv[1].dtype), mode="drop"))
            visible = positions[:, None, :, None] >= jnp.arange(kv[0].shape[1])[None, None, None, :]
            y = grouped_attention(q, kv[0].astype(k.dtype), kv[1].astype(v.dtype), mask=visible).astype(dtype)
        out = Dense((c.width,), ("heads", "kv", "embed"), in_axes=2, use_bias=False,
                    init_std=c.init_std / math.sqrt(2 * c.layers), dtype=dtype, param_dtype=pdtype, name="out")(y)
        out = nn.Dropout(c.dropout, deterministic=self.deterministic)(out)
        return out if kv is None else (out, kv)


def swiglu(c: ModelConfig, deterministic: bool) -> SwiGLU:
    """Llama's feed-forward: ``nn.SwiGLU`` at width ``ffn_dim``, the down projection's init scaled by 1/√(2L)."""
    return SwiGLU(ffn_dim(c), c.width, init_std=c.init_std, down_std=c.init_std / math.sqrt(2 * c.layers),
                  dropout=c.dropout, deterministic=deterministic, dtype=jnp.dtype(c.dtype),
                  param_dtype=jnp.dtype(c.param_dtype), name="mlp")


class LlamaBlock(nn.Module):
    """x + Attn(RMSNorm(x)), then x + FFN(RMSNorm(x)); FFN is SwiGLU, or Mixtral's MoE when ``moe_every``."""
    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, kv=None, positions=None, segment_ids=None):
        c = self.cfg
        attn = Attention(c, self.deterministic, name="attn")
        a = rms_norm("attn_norm", c)(x)
        if kv is None:
            x = x + attn(a, None, positions, segment_ids)
        else:
            y, kv = attn(a, kv, positions)
            x = x + y
        a = rms_norm("mlp_norm", c)(x)
        if c.moe_every:
            x = x + SparseMoE(c, self.deterministic, name="moe")(a)
        else:
            x = x + swiglu(c, self.deterministic)(a)
        return constrain(x, ("batch", "seq", "embed")), kv


class Llama(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, deterministic: bool = True, cache=None, positions=None,
                 segment_ids=None):
        """tokens [B, T] int -> logits [B, T, V] in the compute dtype (V = vocab padded to vocab_multiple).

        ``positions`` [B, T] (or [T]): each token's index in its sequence, rotating q and k (default
        0 … T-1). With ``cache`` (a ``KVCache``, k/v [L, B, C, kv_heads, K]) ``positions`` is required
        and ``(logits, cache)`` is returned, this call's keys and values written at those positions.
        Packed rows: ``segment_ids`` [B, T] keep attention inside each document (with ``positions``
        restarting per document, a packed row computes what each document would alone).
        """
        c = self.cfg
        if c.moe_every not in (0, 1):
            raise ValueError(f"model.moe_every={c.moe_every}: a Llama/Mixtral stack is all MoE (1) or all dense (0)")
        if c.heads % (c.kv_heads or c.heads):
            raise ValueError(f"model.kv_heads={c.kv_heads} must divide model.heads={c.heads}")
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        T = tokens.shape[-1]
        if cache is None and T > c.context:
            raise ValueError(f"sequence length {T} exceeds model.context={c.context}")
        if cache is not None:
            if positions is None:
                raise ValueError("positions [B, T] are required with a cache")
            positions, deterministic = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), tokens.shape), True
        elif positions is not None:
            positions = jnp.asarray(positions, jnp.int32)
        init = nn.initializers.normal(c.init_std)
        V = padded_vocab(c)
        h = hooks()
        wte = param(self, "wte", init, (V, c.width), pdtype, ("vocab", "embed"))
        x = constrain(h.embed(wte, tokens).astype(dtype), ("batch", "seq", "embed"))

        block = LlamaBlock
        if c.remat != "none" and cache is None:
            block = nn.remat(LlamaBlock, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        kv = None if cache is None else (cache.k, cache.v)
        if c.scan_layers:
            stack = nn.scan(block, length=c.layers, variable_axes={"params": 0, "moe": 0},
                            split_rngs={"params": True, "dropout": True, "router": True},
                            in_axes=(0, nn.broadcast, nn.broadcast), metadata_params={nn.PARTITION_NAME: "layers"})
            x, kv = stack(c, deterministic, name="blocks")(x, kv, positions, segment_ids)
        else:
            new = []
            for i in range(c.layers):
                x, kv_i = block(c, deterministic, name=f"blocks_{i}")(
                    x, None if kv is None else (kv[0][i], kv[1][i]), positions, segment_ids)
                new.append(kv_i)
            if kv is not None:
                kv = (jnp.stack([a for a, _ in new]), jnp.stack([b for _, b in new]))

        x = rms_norm("norm", c)(x)
        x = h.dense_in(x, ("embed", "vocab"), 1)
        if c.tied:
            logits = linear(x, wte.astype(dtype), True)                                # x · Eᵀ
        else:
            head = param(self, "lm_head", init, (c.width, V), pdtype, ("embed", "vocab"))
            logits = linear(x, head.astype(dtype))
        logits = constrain(logits, ("batch", "length", "vocab"))
        if V > c.vocab_size:  # padding rows are never predicted
            logits = jnp.where(h.index(logits.shape[-1], "vocab") < c.vocab_size, logits, jnp.finfo(logits.dtype).min)
        return logits if cache is None else (logits, cache._replace(k=kv[0], v=kv[1]))


def pipeline_parts(c: ModelConfig) -> PipelineParts:
    """Llama cut where a pipeline cuts it (``gpt.PipelineParts``): the embedding on the first chunk,
    ``LlamaBlock`` per layer (RoPE from positions 0 … T−1, GQA, SwiGLU, RMSNorm), the final RMSNorm
    and the head (tied to ``wte`` or the separate ``lm_head``) on the last. Dense only: Mixtral's
    router balances over every token of the batch, so splitting it into microbatches changes
    its balance loss (``config/checks.py`` refuses it under a pipeline)."""
    dtype = jnp.dtype(c.dtype)
    block, norm = LlamaBlock(c, True), rms_norm("norm", c)

    def embed(shared, tokens, positions=None):   # positions enter each layer (RoPE)
        wte = read_param(shared["wte"], ("vocab", "embed"))
        return constrain(hooks().embed(wte, tokens).astype(dtype), ("batch", "seq", "embed"))

    def layer(p, x, segment_ids=None, positions=None):
        return block.apply({"params": p}, x, None, positions, segment_ids)[0], {}

    def head(shared, x):
        x = hooks().dense_in(norm.apply({"params": shared["norm"]}, x), ("embed", "vocab"), 1)
        if c.tied:
            logits = linear(x, read_param(shared["wte"], ("vocab", "embed")).astype(dtype), True)
        else:
            logits = linear(x, read_param(shared["lm_head"], ("embed", "vocab")).astype(dtype))
        return mask_padded_vocab(c, constrain(logits, ("batch", "length", "vocab")))

    return PipelineParts(embed, layer, head)
