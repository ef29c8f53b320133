"""T5 (Raffel et al. 2020, §2.1 and §3.1): an encoder-decoder Transformer with relative position bias.

Differences from the original Transformer (Vaswani et al. 2017), as §2.1 lists them:

* pre-LN residual blocks with a simplified LayerNorm: y = x / √(mean(x²) + ε) · g — no mean
  subtraction and no bias (``T5LayerNorm``);
* no position embeddings: each attention adds a learned scalar per (bucket of key − query offset,
  head) to its logits (``t5_relative_bucket`` / ``t5_bias`` in ``lineage_jax/attention/positions.py``);
  one table per stack, held by the first layer and shared by all layers of that stack; bidirectional
  buckets in the encoder, causal ones in the decoder; none in cross-attention;
* logits q·k are *not* divided by √K (T5 folds the scale into the initialisation of W_q);
* no biases in any dense layer; FFN ReLU (T5 v1.0, ``feed_forward_proj="relu"``) or gated GELU,
  GELU(x W₀) ⊙ (x W₁) with the tanh GELU (T5 v1.1, ``"gated-gelu"``; Shazeer 2020);
* the decoder output is multiplied by d_model^−½ before the output projection when that projection is
  the (tied) embedding table (``scale_decoder_outputs``; v1.1 unties the head and drops the scale).

Used purely: ``logits = T5(cfg).apply({"params": params}, input_ids, decoder_input_ids)`` -> [B, Td, V];
``encode`` / ``decode`` (``method=``) run the two halves. Logical axis names on every parameter
(``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``, ``relpos_buckets``). Dropout (``cfg.dropout``) acts where
T5's does — on the embeddings, inside the FFN, on each residual branch and after each stack's final
norm — except on the attention probabilities, where it is left out.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.attention.mha import attention, causal_mask, combine_masks, padding_mask
from lineage_jax.attention.positions import t5_bias
from lineage_jax.config import T5Config
from lineage_jax.nn import Dense, constrain, linear, param

class T5LayerNorm(nn.Module):
    """y = x · rsqrt(mean(x²) + ε) · g (Raffel et al. 2020, §2.1: "no additive bias"); statistics in float32."""
    eps: float
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        g = param(self, "scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype, ("embed",))
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * g.astype(jnp.float32)).astype(self.dtype)


class T5Attention(nn.Module):
    """softmax(q kᵀ + bias, masked) v over H heads of width K (no 1/√K), no biases in q, k, v, o."""
    cfg: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, kv: jax.Array, mask, bias) -> jax.Array:
        c = self.cfg
        H, K, D = c.num_heads, c.d_kv, c.d_model
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        f = c.init_factor
        proj = lambda name, std, src: constrain(
            Dense((H, K), ("embed", "heads", "kv"), use_bias=False, init_std=std, dtype=dtype,
                  param_dtype=pdtype, name=name)(src), ("batch", "length", "heads", "kv"))
        q = proj("query", f * (D * K) ** -0.5, x)       # the folded-in 1/√K (HF's _init_weights)
        k, v = proj("key", f * D ** -0.5, kv), proj("value", f * D ** -0.5, kv)
        y = attention(q, k, v, mask=mask, bias=bias, scale=1.0)
        return Dense((D,), ("heads", "kv", "embed"), in_axes=2, use_bias=False, init_std=f * (H * K) ** -0.5,
                     dtype=dtype, param_dtype=pdtype, name="out")(y)


class T5FeedForward(nn.Module):
    """ReLU(x W_i) W_o (v1.0) or (GELU_tanh(x W_i0) ⊙ x W_i1) W_o (v1.1), no biases."""
    cfg: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        dense = lambda feats, axes, std, name: Dense(feats, axes, use_bias=False, init_std=std, dtype=dtype,
                                                     param_dtype=pdtype, name=name)
        std_in = c.init_factor * c.d_model ** -0.5
        if c.feed_forward_proj == "relu":
            h = jax.nn.relu(dense((c.d_ff,), ("embed", "mlp"), std_in, "wi")(x))
        else:
            h = (jax.nn.gelu(dense((c.d_ff,), ("embed", "mlp"), std_in, "wi_0")(x), approximate=True)
                 * dense((c.d_ff,), ("embed", "mlp"), std_in, "wi_1")(x))
        h = nn.Dropout(c.dropout, deterministic=self.deterministic)(constrain(h, ("batch", "length", "mlp")))
        return dense((c.d_model,), ("mlp", "embed"), c.init_factor * c.d_ff ** -0.5, "wo")(h)


class T5Layer(nn.Module):
    """x + Attn(LN(x)) [+ x + CrossAttn(LN(x), enc)] + x + FFN(LN(x)): pre-LN, dropout on each branch."""
    cfg: T5Config
    cross: bool
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, bias, enc=None, enc_mask=None):
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        drop = lambda y: nn.Dropout(c.dropout, deterministic=self.deterministic)(y)
        norm = lambda name: T5LayerNorm(c.layer_norm_epsilon, dtype, pdtype, name=name)
        h = norm("self_ln")(x)
        x = x + drop(T5Attention(c, name="self_attn")(h, h, mask, bias))
        if self.cross:
            x = x + drop(T5Attention(c, name="cross_attn")(norm("cross_ln")(x), enc, enc_mask, None))
        x = x + drop(T5FeedForward(c, self.deterministic, name="ffn")(norm("ffn_ln")(x)))
        return constrain(x, ("batch", "seq", "embed"))


class T5Stack(nn.Module):
    """The encoder (bidirectional buckets) or the decoder (causal buckets + cross-attention)."""
    cfg: T5Config
    decoder: bool

    @nn.compact
    def __call__(self, x, mask, enc=None, enc_mask=None, deterministic: bool = True):
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        T = x.shape[1]
        table = param(self, "relative_attention_bias", nn.initializers.normal(c.init_factor * c.d_model ** -0.5),
                      (c.relative_attention_num_buckets, c.num_heads), pdtype, ("relpos_buckets", "heads"))
        bias = t5_bias(table.astype(jnp.float32), T, T, bidirectional=not self.decoder,
                       max_distance=c.relative_attention_max_distance)          # [H, T, T], shared by all layers
        x = nn.Dropout(c.dropout, deterministic=deterministic)(x)
        for i in range(c.decoder_layers if self.decoder else c.num_layers):
            x = T5Layer(c, self.decoder, deterministic, name=f"layer_{i}")(x, mask, bias, enc, enc_mask)
        x = T5LayerNorm(c.layer_norm_epsilon, dtype, pdtype, name="final_ln")(x)
        return nn.Dropout(c.dropout, deterministic=deterministic)(x)


def _pad(mask) -> jax.Array | None:
    return None if mask is None else padding_mask(jnp.asarray(mask) != 0)


class T5(nn.Module):
    """T5 encoder-decoder: ``(input_ids, decoder_input_ids) -> logits [B, Td, V]``."""
    cfg: T5Config

    def setup(self):
        c = self.cfg
        pdtype = jnp.dtype(c.param_dtype)
        self.shared = param(self, "shared", nn.initializers.normal(c.init_factor), (c.vocab_size, c.d_model),
                            pdtype, ("vocab", "embed"))
        self.encoder = T5Stack(c, decoder=False)
        self.decoder = T5Stack(c, decoder=True)
        if not c.tie_word_embeddings:
            self.lm_head = param(self, "lm_head", nn.initializers.normal(c.init_factor * c.d_model ** -0.5),
                                 (c.d_model, c.vocab_size), pdtype, ("embed", "vocab"))

    def _embed(self, ids):
        return jnp.take(self.shared, ids, axis=0).astype(jnp.dtype(self.cfg.dtype))

    def encode(self, input_ids, attention_mask=None, deterministic: bool = True):
        """input_ids [B, Ts] -> encoder states [B, Ts, D]; attention_mask [B, Ts] 1 = real, 0 = padding."""
        return self.encoder(self._embed(input_ids), _pad(attention_mask), deterministic=deterministic)

    def decode(self, decoder_input_ids, encoded, attention_mask=None, decoder_attention_mask=None,
               deterministic: bool = True):
        """Decoder logits [B, Td, V] given encoder states; ``attention_mask`` is the encoder's padding."""
        c = self.cfg
        dtype = jnp.dtype(c.dtype)
        Td = decoder_input_ids.shape[1]
        mask = combine_masks(causal_mask(Td), _pad(decoder_attention_mask))
        y = self.decoder(self._embed(decoder_input_ids), mask, encoded, _pad(attention_mask), deterministic)
        if c.scale_decoder_outputs:
            y = y * jnp.asarray(c.d_model ** -0.5, dtype)
        if c.tie_word_embeddings:
            logits = linear(y, self.shared.astype(dtype), True)                  # y · Eᵀ
        else:
            logits = linear(y, self.lm_head.astype(dtype))
        return constrain(logits, ("batch", "length", "vocab"))

    def __call__(self, input_ids, decoder_input_ids, attention_mask=None, decoder_attention_mask=None,
                 deterministic: bool = True):
        enc = self.encode(input_ids, attention_mask, deterministic)
        return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask, deterministic)


def shift_right(labels: jax.Array, start_id: int = 0, pad_id: int = 0) -> jax.Array:
    """Decoder inputs from targets: [start, y₀, …, y_{T−2}], with −100 (ignored labels) read as padding."""
    labels = jnp.asarray(labels)
    shifted = jnp.concatenate([jnp.full_like(labels[:, :1], start_id), labels[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_id, shifted)


__all__ = ["T5", "T5Config", "T5LayerNorm", "shift_right"]
