"""BERT (Devlin et al. 2019): a bidirectional post-LN Transformer encoder with a masked-LM head.

    x₀ = LN(E_word[ids] + E_pos[0…T−1] + E_type[type ids])                    (§3, Fig. 2)
    a  = LN(x + Attn(x))           Attn: multi-head, padding keys masked      (post-LN, Vaswani et al. 2017)
    x' = LN(a + W₂ GELU(W₁ a))     GELU with the exact erf (Hendrycks & Gimpel 2016)
    logits = LN(GELU(W_t x_L)) · E_wordᵀ + b                                    (MLM head, App. A.1)

The output projection of the MLM head is the word-embedding table (tied) plus a bias of its own.
Used purely: ``logits = Bert(cfg).apply({"params": params}, input_ids, attention_mask, token_type_ids)``
-> [B, T, V]. Every parameter carries logical axis names (``vocab``, ``embed``, ``position``,
``token_type``, ``heads``, ``kv``, ``mlp``); the model knows nothing of meshes. Dropout (``cfg.dropout``)
is BERT's hidden dropout (after the embeddings, each attention output and each FFN output); dropout
on the attention probabilities is left out.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.attention.mha import attention, padding_mask
from lineage_jax.config import BertConfig
from lineage_jax.nn import Dense, constrain, layer_norm, linear, param

# Hugging Face ``hidden_act`` names (``BERT_ACTIVATIONS``) -> the function (BERT's own "gelu" is the exact erf form).
ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
               "relu": jax.nn.relu}


class BertLayer(nn.Module):
    """One post-LN encoder layer: LN(x + Attn(x)), then LN(a + FFN(a))."""
    cfg: BertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:   # x [B, T, D]
        c = self.cfg
        H, K = c.heads, c.width // c.heads
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        dense = lambda feats, axes, name, in_axes=1: Dense(feats, axes, in_axes=in_axes, init_std=c.init_std,
                                                           dtype=dtype, param_dtype=pdtype, name=name)
        drop = lambda y: nn.Dropout(c.dropout, deterministic=self.deterministic)(y)
        q, k, v = (constrain(dense((H, K), ("embed", "heads", "kv"), n)(x), ("batch", "length", "heads", "kv"))
                   for n in ("query", "key", "value"))
        y = attention(q, k, v, mask=mask)                                             # [B, T, H, K]
        y = dense((c.width,), ("heads", "kv", "embed"), "out", in_axes=2)(y)
        a = layer_norm("attn_ln", c.layernorm_eps, dtype, pdtype)(x + drop(y))
        h = ACTIVATIONS[c.hidden_act](dense((c.mlp_dim,), ("embed", "mlp"), "fc")(a))
        h = constrain(h, ("batch", "length", "mlp"))
        y = dense((c.width,), ("mlp", "embed"), "proj")(h)
        return constrain(layer_norm("mlp_ln", c.layernorm_eps, dtype, pdtype)(a + drop(y)), ("batch", "seq", "embed"))


class Bert(nn.Module):
    """BERT encoder + masked-LM head: ``(input_ids, attention_mask, token_type_ids) -> logits [B, T, V]``."""
    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
        """input_ids [B, T] int; attention_mask [B, T] (1 = real token, 0 = padding; None: all real);
        token_type_ids [B, T] (segment A = 0 / B = 1; None: all 0). Returns MLM logits [B, T, V] in the
        compute dtype. Padding keys are masked out of every attention; padding positions still get logits."""
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        T = input_ids.shape[-1]
        if T > c.max_positions:
            raise ValueError(f"sequence length {T} exceeds BertConfig.max_positions={c.max_positions}")
        init = nn.initializers.normal(c.init_std)
        wte = param(self, "word_embeddings", init, (c.vocab_size, c.width), pdtype, ("vocab", "embed"))
        wpe = param(self, "position_embeddings", init, (c.max_positions, c.width), pdtype, ("position", "embed"))
        wtt = param(self, "token_type_embeddings", init, (c.type_vocab_size, c.width), pdtype, ("token_type", "embed"))
        types = jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = jnp.take(wte, input_ids, axis=0) + jnp.take(wtt, types, axis=0) + wpe[:T]
        x = layer_norm("embed_ln", c.layernorm_eps, dtype, pdtype)(x.astype(dtype))
        x = constrain(nn.Dropout(c.dropout, deterministic=deterministic)(x), ("batch", "seq", "embed"))
        mask = None if attention_mask is None else padding_mask(jnp.asarray(attention_mask) != 0)
        for i in range(c.layers):
            x = BertLayer(c, deterministic, name=f"layer_{i}")(x, mask)
        # MLM head (App. A.1): transform, then the tied decoder E_wordᵀ plus an output bias.
        h = Dense((c.width,), ("embed", "mlp"), init_std=c.init_std, dtype=dtype, param_dtype=pdtype,
                  name="mlm_transform")(x)
        h = layer_norm("mlm_ln", c.layernorm_eps, dtype, pdtype)(ACTIVATIONS[c.hidden_act](h))
        bias = param(self, "mlm_bias", nn.initializers.zeros, (c.vocab_size,), pdtype, ("vocab",))
        logits = linear(h, wte.astype(dtype), True) + bias.astype(dtype)
        return constrain(logits, ("batch", "length", "vocab"))


__all__ = ["ACTIVATIONS", "Bert", "BertConfig"]
