"""Hugging Face T5 checkpoints (``T5ForConditionalGeneration``; v1.0 ReLU and v1.1 gated-GELU) in and out of ``T5``.

The family protocol of ``lineage_jax/interop/hf.py``: ``load(path, hf, **overrides)``,
``save(model, params, path)``, ``handles(model)``; tensors through ``hf.read_tensors`` (safetensors
only). torch ``Linear`` weights are [out, in] and transposed into our [in, out] kernels:

    shared.weight [V, D]                                            -> shared
    {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, H]
                                                                    -> {encoder,decoder}.relative_attention_bias
    {stack}.block.{i}.layer.0.SelfAttention.{q,k,v}  [HK, D]        -> layer_{i}.self_attn.{query,key,value} [D, H, K]
    {stack}.block.{i}.layer.0.SelfAttention.o        [D, HK]        -> layer_{i}.self_attn.out [H, K, D]
    {stack}.block.{i}.layer.0.layer_norm                            -> layer_{i}.self_ln
    decoder.block.{i}.layer.1.EncDecAttention.* / .layer_norm       -> layer_{i}.cross_attn / cross_ln
    {stack}.block.{i}.layer.{1|2}.DenseReluDense.{wi | wi_0, wi_1, wo} -> layer_{i}.ffn.{…} (transposed)
    {stack}.block.{i}.layer.{1|2}.layer_norm                        -> layer_{i}.ffn_ln
    {stack}.final_layer_norm                                        -> {stack}.final_ln
    lm_head.weight [V, D]                                           -> lm_head [D, V] when it differs from shared

Tied or not, and scaled or not: Hugging Face ``transformers`` 5 always writes ``tie_word_embeddings: true``
and says whether the decoder output is scaled by d_model^−½ in ``scale_decoder_outputs``; older
configs say both with ``tie_word_embeddings`` (false for v1.1: untied and unscaled). Here the head is
untied exactly when the checkpoint holds an ``lm_head.weight`` different from ``shared.weight``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import T5_FEED_FORWARD, ConfigError, T5Config
from lineage_jax.interop.hf import InteropError, read_tensors, replace_fields, write_checkpoint
from lineage_jax.models.t5 import T5

# Copies of shared.weight older checkpoints carry, and a cross-attention bias table T5 never uses.
_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def handles(model) -> bool:
    return isinstance(model, T5)


def _config(hf: dict, path: Path, tied: bool, overrides: dict):
    for key, want in (("is_decoder", False), ("is_encoder_decoder", True)):
        if hf.get(key, want) != want:
            raise InteropError(f"{path}: {key}={hf[key]!r} is not supported (only {want!r}: "
                               f"T5ForConditionalGeneration)")
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in T5_FEED_FORWARD:
        raise InteropError(f"{path}: feed_forward_proj={ff!r} is not supported; "
                           f"supported: {', '.join(T5_FEED_FORWARD)}")
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    try:
        cfg = T5Config(vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]), d_kv=int(hf["d_kv"]),
                       d_ff=int(hf["d_ff"]), num_heads=int(hf["num_heads"]), num_layers=int(hf["num_layers"]),
                       num_decoder_layers=int(hf.get("num_decoder_layers") or hf["num_layers"]),
                       relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
                       relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
                       layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)), feed_forward_proj=ff,
                       tie_word_embeddings=tied, scale_decoder_outputs=bool(scale),
                       init_factor=float(hf.get("initializer_factor", 1.0)),
                       pad_token_id=int(hf.get("pad_token_id") or 0), eos_token_id=int(hf.get("eos_token_id") or 1))
        return replace_fields(cfg, overrides, path)
    except KeyError as e:
        raise InteropError(f"{path}: config.json lacks {e.args[0]!r}, which a T5 config needs") from None
    except (TypeError, ConfigError) as e:
        raise InteropError(f"{path}: {e}") from None


def load(path: Path, hf: dict, **overrides: Any):
    """A T5ForConditionalGeneration directory -> ``(T5(cfg), params)``; ``overrides`` replace ``T5Config``
    fields (``dtype``, ``param_dtype``, ``dropout``)."""
    tensors = {k: v for k, v in read_tensors(path).items() if k not in _UNUSED}
    if "shared.weight" not in tensors:
        raise InteropError(f"{path}: no shared.weight; supported: T5ForConditionalGeneration checkpoints")
    if not any(k.startswith("decoder.") for k in tensors):
        raise InteropError(f"{path}: no decoder tensors (a T5EncoderModel?); supported: T5ForConditionalGeneration")
    shared = np.asarray(tensors["shared.weight"], np.float32)
    head = tensors.get("lm_head.weight")
    tied = head is None or np.array_equal(np.asarray(head, np.float32), shared)
    cfg = _config(hf, path, tied, overrides)
    used = {"shared.weight"}

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise InteropError(f"{path}: tensor '{name}' missing from the checkpoint")
        a = np.asarray(tensors[name], np.float32)
        if a.shape != shape:
            raise InteropError(f"{path}: tensor '{name}' has shape {a.shape}, config.json implies {shape}")
        used.add(name)
        return a

    D, H, K, F, V = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff, cfg.vocab_size
    if shared.shape != (V, D):
        raise InteropError(f"{path}: tensor 'shared.weight' has shape {shared.shape}, config.json implies {(V, D)}")
    for name in _COPIES:
        if name in tensors and not np.array_equal(get(name, (V, D)), shared):
            raise InteropError(f"{path}: {name} differs from shared.weight; T5 shares one embedding table")

    def attn(p: str) -> dict:
        out = {ours: {"kernel": get(f"{p}.{hf_}.weight", (H * K, D)).T.reshape(D, H, K)}
               for ours, hf_ in (("query", "q"), ("key", "k"), ("value", "v"))}
        out["out"] = {"kernel": get(f"{p}.o.weight", (D, H * K)).T.reshape(H, K, D)}
        return out

    def ffn(p: str) -> dict:
        names = ("wi",) if cfg.feed_forward_proj == "relu" else ("wi_0", "wi_1")
        out = {n: {"kernel": get(f"{p}.{n}.weight", (F, D)).T} for n in names}
        out["wo"] = {"kernel": get(f"{p}.wo.weight", (D, F)).T}
        return out

    norm = lambda p: {"scale": get(p + ".weight", (D,))}
    params: dict[str, Any] = {"shared": shared}
    for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
        sp = {"relative_attention_bias": get(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                                             (cfg.relative_attention_num_buckets, H)),
              "final_ln": norm(f"{stack}.final_layer_norm")}
        for i in range(n_layers):
            b = f"{stack}.block.{i}.layer."
            layer = {"self_attn": attn(b + "0.SelfAttention"), "self_ln": norm(b + "0.layer_norm")}
            f = 1
            if stack == "decoder":
                layer.update(cross_attn=attn(b + "1.EncDecAttention"), cross_ln=norm(b + "1.layer_norm"))
                f = 2
            layer.update(ffn=ffn(f"{b}{f}.DenseReluDense"), ffn_ln=norm(f"{b}{f}.layer_norm"))
            sp[f"layer_{i}"] = layer
        params[stack] = sp
    if not tied:
        params["lm_head"] = get("lm_head.weight", (V, D)).T
    used.add("lm_head.weight")
    extra = sorted(set(tensors) - used)
    if extra:
        raise InteropError(f"{path}: unexpected tensor '{extra[0]}' ({len(extra)} in all) for a T5 with "
                           f"{cfg.num_layers}+{cfg.decoder_layers} layers and feed_forward_proj={cfg.feed_forward_proj!r}")
    pdtype = jnp.dtype(cfg.param_dtype)
    return T5(cfg), jax.tree.map(lambda a: jnp.asarray(a, pdtype), params)


def hf_config(cfg) -> dict:
    """The ``config.json`` of a ``T5ForConditionalGeneration`` equal to ``T5(cfg)`` (read by transformers 4 and 5)."""
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff, "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers, "num_decoder_layers": cfg.decoder_layers,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "feed_forward_proj": cfg.feed_forward_proj,
            "tie_word_embeddings": cfg.tie_word_embeddings, "scale_decoder_outputs": cfg.scale_decoder_outputs,
            "initializer_factor": cfg.init_factor, "dropout_rate": cfg.dropout, "is_encoder_decoder": True,
            "is_decoder": False, "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
            "decoder_start_token_id": cfg.pad_token_id, "dtype": "float32"}


def save(model, params, path: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` (float32) that ``T5ForConditionalGeneration.from_pretrained``
    loads with no missing or unexpected keys; an untied head is written as ``lm_head.weight``."""
    cfg = model.cfg
    D, H, K = cfg.d_model, cfg.num_heads, cfg.d_kv
    P = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), params)
    t: dict[str, np.ndarray] = {"shared.weight": P["shared"]}

    def attn(p: str, a: dict) -> None:
        for ours, hf_ in (("query", "q"), ("key", "k"), ("value", "v")):
            t[f"{p}.{hf_}.weight"] = a[ours]["kernel"].reshape(D, H * K).T
        t[f"{p}.o.weight"] = a["out"]["kernel"].reshape(H * K, D).T

    for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
        S = P[stack]
        t[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = S["relative_attention_bias"]
        t[f"{stack}.final_layer_norm.weight"] = S["final_ln"]["scale"]
        for i in range(n_layers):
            b, L = f"{stack}.block.{i}.layer.", S[f"layer_{i}"]
            attn(b + "0.SelfAttention", L["self_attn"])
            t[b + "0.layer_norm.weight"] = L["self_ln"]["scale"]
            f = 1
            if stack == "decoder":
                attn(b + "1.EncDecAttention", L["cross_attn"])
                t[b + "1.layer_norm.weight"] = L["cross_ln"]["scale"]
                f = 2
            for n, w in L["ffn"].items():
                t[f"{b}{f}.DenseReluDense.{n}.weight"] = w["kernel"].T
            t[f"{b}{f}.layer_norm.weight"] = L["ffn_ln"]["scale"]
    if not cfg.tie_word_embeddings:
        t["lm_head.weight"] = P["lm_head"].T
    write_checkpoint(Path(path), t, hf_config(cfg))
