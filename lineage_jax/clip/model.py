"""CLIP's two towers (Radford et al. 2021, §2.4): an image encoder (the ViT of ``vision.vit``) and a
text encoder (the project's GPT-2 ``Block``s: pre-LN, causal), each followed by a linear projection
into one joint space where both embeddings are L2-normalised; the logit scale is a learned
parameter t (s = exp t) initialised to log(1/0.07) and clipped at 100 (``clip.loss``).

The text tower reads the residual stream at the first ``<eos>`` ("the activations of the highest
layer of the transformer at the [EOS] token are treated as the feature representation of the
text", §2.4); under the causal mask the padding after it cannot leak in, so no padding mask is needed.

Every parameter carries logical axis names (``vocab``, ``position``, ``embed``, ``heads``, ``kv``,
``mlp``; the projections' output dimension is unnamed, i.e. replicated; the scale is a scalar), so
``clip.setup`` shards it with the same strategy tables as the language models; ``dtype`` (compute)
and ``param_dtype`` (storage) are separate. Used purely: ``CLIP(cfg).init(key, images, tokens)``,
``CLIP(cfg).apply({"params": p}, images, tokens)`` or ``method=CLIP.encode_image / encode_text``.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lineage_jax.clip.loss import init_log_scale, normalize
from lineage_jax.config import ModelConfig
from lineage_jax.config.errors import ConfigError
from lineage_jax.models.gpt import Block
from lineage_jax.nn import Dense, constrain, hooks, layer_norm, param
from lineage_jax.vision.vit import ViT, ViTConfig


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """A tiny CLIP by default (~0.1 M parameters); ViT-B/32's CLIP is image (768, 12, 12), text (512, 12, 8), E = 512."""
    vocab_size: int = 16
    context: int = 8                 # text positions, <eos> included
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 32              # E: the joint space
    image: ViTConfig = ViTConfig(image_size=32, patch_size=8, width=64, depth=2, heads=4, mlp_dim=128)
    init_std: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if isinstance(self.image, dict):
            object.__setattr__(self, "image", ViTConfig(**self.image))
        for key in ("vocab_size", "text_width", "text_layers", "text_heads", "embed_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"clip.{key}={getattr(self, key)}: must be a positive integer")
        if self.context < 2:
            raise ConfigError(f"clip.context={self.context}: must be at least 2 (a word and <eos>)")
        if self.text_width % self.text_heads:
            raise ConfigError(f"clip.text_heads={self.text_heads}: must divide text_width={self.text_width}")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in ("float32", "bfloat16", "float16"):
                raise ConfigError(f"clip.{key}={getattr(self, key)!r}: allowed float32, bfloat16, float16")

    def text_model(self) -> ModelConfig:
        """The GPT-2 block settings of the text tower."""
        return ModelConfig(vocab_size=self.vocab_size, context=self.context, layers=self.text_layers,
                           width=self.text_width, heads=self.text_heads, init_std=self.init_std,
                           dtype=self.dtype, param_dtype=self.param_dtype, scan_layers=False,
                           attn_impl="chunks", attn_chunks=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class TextEncoder(nn.Module):
    """tokens [B, T] (ids, <eos>, <pad>…) -> the final-LN feature at each row's first <eos>, [B, D]."""
    cfg: CLIPConfig
    eos_id: int = 1

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        c, m = self.cfg, self.cfg.text_model()
        B, T = tokens.shape
        if T > c.context:
            raise ValueError(f"text of {T} tokens; this text tower reads at most clip.context={c.context}")
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        init = nn.initializers.normal(c.init_std)
        h = hooks()
        wte = param(self, "wte", init, (c.vocab_size, c.text_width), pdtype, ("vocab", "embed"))
        wpe = param(self, "wpe", nn.initializers.normal(0.01), (c.context, c.text_width), pdtype, ("position", "embed"))
        x = (h.embed(wte, tokens) + h.positions(wpe, T, None)).astype(dtype)
        x = constrain(x, ("batch", "seq", "embed"))
        for i in range(c.text_layers):
            x, _ = Block(m, True, False, name=f"blocks_{i}")(x)
        x = layer_norm("ln_f", m.layernorm_eps, dtype, pdtype)(x)
        eos = jnp.argmax(tokens == self.eos_id, axis=-1)            # first <eos> (0 if none: the first token)
        return jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]


class CLIP(nn.Module):
    """(images [B, H, W, C] in [-1, 1], tokens [B, T]) -> (image_emb [B, E], text_emb [B, E], log_scale),
    both embeddings L2-normalised (float32)."""
    cfg: CLIPConfig

    def setup(self):
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        image = dataclasses.replace(c.image, num_classes=0, dtype=c.dtype, param_dtype=c.param_dtype)
        self.visual = ViT(image)
        self.text = TextEncoder(c)
        proj = lambda: Dense((c.embed_dim,), ("embed", None), use_bias=False, init_std=c.init_std,   # noqa: E731
                             dtype=dtype, param_dtype=pdtype)
        self.image_proj, self.text_proj = proj(), proj()
        self.log_scale = param(self, "log_scale", lambda *_: init_log_scale(), (), jnp.float32, ())

    def encode_image(self, images: jax.Array) -> jax.Array:
        return normalize(self.image_proj(self.visual(images)))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return normalize(self.text_proj(self.text(tokens)))

    def __call__(self, images: jax.Array, tokens: jax.Array):
        return self.encode_image(images), self.encode_text(tokens), self.log_scale


def init_params(cfg: CLIPConfig, key: jax.Array):
    """Boxed (logical-axis) parameters; ``nn.unbox`` for plain arrays, ``nn.get_partition_spec`` for the names."""
    images = jnp.zeros((1, cfg.image.image_size, cfg.image.image_size, cfg.image.channels), jnp.float32)
    return CLIP(cfg).init(key, images, jnp.ones((1, cfg.context), jnp.int32))["params"]


def model_config(overrides=()) -> CLIPConfig:
    """``CLIPConfig`` with ``key=value`` overrides (``image.key=value`` for the ViT); an unknown key or a
    value of the wrong type is one line naming the allowed keys. The vocabulary size and the image's
    size and channels are not settings: the data fix them."""
    top, image = {}, {}
    fields = {f.name: f for f in dataclasses.fields(CLIPConfig) if f.name not in ("image", "vocab_size")}
    vit = {f.name: f for f in dataclasses.fields(ViTConfig)    # the data decide the image's shape; CLIP the rest
           if f.name not in ("num_classes", "dtype", "param_dtype", "image_size", "channels")}
    for item in overrides:
        key, _, raw = item.partition("=")
        table, name, out = (vit, key[6:], image) if key.startswith("image.") else (fields, key, top)
        if name not in table:
            allowed = sorted(fields) + [f"image.{k}" for k in sorted(vit)]
            raise ConfigError(f"{key}: not a CLIP model setting; allowed {', '.join(allowed)}")
        kind = type(getattr(CLIPConfig.image if table is vit else CLIPConfig, name))
        try:
            out[name] = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: must be a{'n' if kind is int else ''} {kind.__name__}") from None
    base = CLIPConfig()
    return dataclasses.replace(base, **top, image=dataclasses.replace(base.image, **image))
