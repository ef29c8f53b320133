"""The original Transformer (Vaswani et al. 2017, "Attention Is All You Need"): an encoder-decoder.

    encoder layer   x = LN(x + SelfAttn(x, pad mask));  x = LN(x + FFN(x))       §3.1 (post-LN)
    decoder layer   y = LN(y + SelfAttn(y, causal));   y = LN(y + CrossAttn(y, memory, pad mask));
                    y = LN(y + FFN(y))
    FFN(x)          max(0, x W1 + b1) W2 + b2                                      §3.3, eq. 2
    embeddings      E[token] · √d_model + PE(position), E shared by the source, the target and
                    the pre-softmax projection (logits = y · Eᵀ)                   §3.4, §3.5
    dropout         on each sub-layer output before the residual add, and on the embedding sums  §5.4

"LN(x + Sublayer(x))" is the post-LN block; GPT-2 (``gpt.py``) moved the norm in front of the
sub-layer (pre-LN, Xiong et al. 2020). There is no final LayerNorm: each stack already ends in one.

Used purely: ``params = Transformer(cfg).init(key, src, tgt_in)["params"]`` and
``logits = Transformer(cfg).apply({"params": params}, src, tgt_in)`` (src [B, S], tgt_in [B, T]
int, PAD = ``cfg.pad_id``; logits [B, T, V]). For decoding, ``method=Transformer.encode`` gives the
memory [B, S, D] once and ``method=Transformer.decode`` the logits from it; ``greedy_decode`` runs
the whole loop in one compiled program of fixed shape. Every parameter carries logical axis names
(``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``).
"""
from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lineage_jax.attention.mha import attention, causal_mask, padding_mask
from lineage_jax.attention.positions import sinusoidal
from lineage_jax.config import TransformerConfig
from lineage_jax.nn import Dense, constrain, layer_norm, linear, param


def _dtypes(c: TransformerConfig):
    return jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1 … head_H) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V) (§3.2.2)."""
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x_q: jax.Array, x_kv: jax.Array, mask: jax.Array | None) -> jax.Array:
        c = self.cfg
        H, K = c.heads, c.d_model // c.heads
        dtype, pdtype = _dtypes(c)
        proj = lambda name: Dense((H, K), ("embed", "heads", "kv"), init_std=c.d_model ** -0.5,
                                  dtype=dtype, param_dtype=pdtype, name=name)
        q = constrain(proj("query")(x_q), ("batch", "length", "heads", "kv"))
        k = constrain(proj("key")(x_kv), ("batch", "length", "heads", "kv"))
        v = constrain(proj("value")(x_kv), ("batch", "length", "heads", "kv"))
        y = attention(q, k, v, mask=mask)                                             # [B, T, H, K]
        return Dense((c.d_model,), ("heads", "kv", "embed"), in_axes=2, init_std=c.d_model ** -0.5,
                     dtype=dtype, param_dtype=pdtype, name="out")(y)


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2 (§3.3, eq. 2)."""
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        dtype, pdtype = _dtypes(c)
        h = Dense((c.d_ff,), ("embed", "mlp"), init_std=c.d_model ** -0.5, dtype=dtype, param_dtype=pdtype, name="fc")(x)
        h = constrain(jax.nn.relu(h), ("batch", "length", "mlp"))
        return Dense((c.d_model,), ("mlp", "embed"), init_std=c.d_ff ** -0.5, dtype=dtype, param_dtype=pdtype,
                     name="proj")(h)


def post_ln(c: TransformerConfig, name: str, x: jax.Array, sub: jax.Array, deterministic: bool) -> jax.Array:
    """LN(x + Dropout(Sublayer(x))): the residual connection of §3.1 with the dropout of §5.4.

    Called inside a compact module: the LayerNorm becomes that module's child ``name``.
    """
    sub = nn.Dropout(c.dropout, deterministic=deterministic)(sub)
    return layer_norm(name, c.layernorm_eps, *_dtypes(c))(x + sub)


class EncoderLayer(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x, src_mask, deterministic: bool = True):
        c = self.cfg
        x = post_ln(c, "attn_norm", x, MultiHeadAttention(c, name="self_attn")(x, x, src_mask), deterministic)
        x = post_ln(c, "ffn_norm", x, FeedForward(c, name="ffn")(x), deterministic)
        return constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, y, memory, self_mask, src_mask, deterministic: bool = True):
        c = self.cfg
        y = post_ln(c, "self_norm", y, MultiHeadAttention(c, name="self_attn")(y, y, self_mask), deterministic)
        y = post_ln(c, "cross_norm", y, MultiHeadAttention(c, name="cross_attn")(y, memory, src_mask), deterministic)
        y = post_ln(c, "ffn_norm", y, FeedForward(c, name="ffn")(y), deterministic)
        return constrain(y, ("batch", "length", "embed"))


class Transformer(nn.Module):
    """The encoder-decoder of Figure 1. ``__call__(src, tgt_in)`` = ``decode(tgt_in, encode(src), src)``."""
    cfg: TransformerConfig

    def setup(self):
        c = self.cfg
        # One table for source tokens, target tokens and the output projection (§3.4). Initialised
        # N(0, 1/D) so that E·√D has unit variance, the scale of the position encoding.
        self.embedding = param(self, "embedding", nn.initializers.normal(c.d_model ** -0.5),
                               (c.vocab_size, c.d_model), jnp.dtype(c.param_dtype), ("vocab", "embed"))
        self.encoder = [EncoderLayer(c, name=f"encoder_{i}") for i in range(c.encoder_layers)]
        self.decoder = [DecoderLayer(c, name=f"decoder_{i}") for i in range(c.decoder_layers)]
        self.drop = nn.Dropout(c.dropout)

    def _embed(self, tokens: jax.Array, deterministic: bool) -> jax.Array:
        """E[token] · √d_model + PE(position) (§3.4, §3.5), then dropout: [B, T] -> [B, T, D]."""
        c = self.cfg
        T = tokens.shape[-1]
        if T > c.max_len:
            raise ValueError(f"sequence length {T} exceeds TransformerConfig.max_len={c.max_len}")
        x = jnp.take(self.embedding, tokens, axis=0).astype(jnp.float32) * math.sqrt(c.d_model)
        x = (x + sinusoidal(jnp.arange(T), c.d_model)).astype(jnp.dtype(c.dtype))
        return constrain(self.drop(x, deterministic=deterministic), ("batch", "length", "embed"))

    def source_mask(self, src: jax.Array) -> jax.Array:
        """[B, 1, 1, S]: True at real (non-PAD) source tokens; the keys any query may attend to."""
        return padding_mask(src != self.cfg.pad_id)

    def encode(self, src: jax.Array, deterministic: bool = True) -> jax.Array:
        """src [B, S] int -> memory [B, S, D]. PAD keys are masked; PAD rows are computed but never read."""
        x, mask = self._embed(src, deterministic), self.source_mask(src)
        for layer in self.encoder:
            x = layer(x, mask, deterministic)
        return x

    def decode(self, tgt_in: jax.Array, memory: jax.Array, src: jax.Array, deterministic: bool = True) -> jax.Array:
        """tgt_in [B, T] (BOS y_1 … y_{T-1}), memory [B, S, D], src [B, S] (for its PAD mask) -> logits [B, T, V].

        Position t sees target positions ≤ t (causal self-attention) and every real source token.
        """
        T = tgt_in.shape[-1]
        y, src_mask = self._embed(tgt_in, deterministic), self.source_mask(src)
        self_mask = causal_mask(T)[None, None]                                 # [1, 1, T, T]
        for layer in self.decoder:
            y = layer(y, memory, self_mask, src_mask, deterministic)
        logits = linear(y, self.embedding.astype(y.dtype), True)                # y · Eᵀ (§3.4)
        return constrain(logits, ("batch", "length", "vocab"))

    def __call__(self, src: jax.Array, tgt_in: jax.Array, deterministic: bool = True) -> jax.Array:
        """src [B, S], tgt_in [B, T] -> logits [B, T, V] predicting tgt_in shifted left (teacher forcing)."""
        return self.decode(tgt_in, self.encode(src, deterministic), src, deterministic)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "bos_id", "eos_id"))
def greedy_decode(model: Transformer, params, src: jax.Array, *, max_len: int, bos_id: int, eos_id: int) -> jax.Array:
    """Greedy decoding: encode once, then pick argmax p(y_t | y_<t, x) for t = 1 … max_len.

    src [B, S] -> tokens [B, max_len]: each row's output tokens, its EOS, then PAD. Shapes are
    fixed (the decoder re-reads a [B, max_len + 1] buffer each step; causality makes the unwritten
    tail irrelevant), so one compile serves every batch of this shape. The loop stops early once
    every row has emitted EOS.
    """
    pad = model.cfg.pad_id
    B = src.shape[0]
    memory = model.apply({"params": params}, src, method=Transformer.encode)
    buf = jnp.full((B, max_len + 1), pad, jnp.int32).at[:, 0].set(bos_id)
    done = jnp.zeros((B,), bool)

    def cond(carry):
        t, _, done = carry
        return (t < max_len) & ~jnp.all(done)

    def body(carry):
        t, buf, done = carry
        logits = model.apply({"params": params}, buf[:, :max_len], memory, src, method=Transformer.decode)
        nxt = jnp.argmax(lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, pad, nxt)
        buf = lax.dynamic_update_index_in_dim(buf, nxt, t + 1, axis=1)
        return t + 1, buf, done | (nxt == eos_id)

    _, buf, _ = lax.while_loop(cond, body, (jnp.int32(0), buf, done))
    return buf[:, 1:]
