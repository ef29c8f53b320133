"""Hugging Face BERT checkpoints (``BertForMaskedLM``, ``BertForPreTraining``) in and out of ``Bert``.

The family protocol of ``lineage_jax/interop/hf.py``: ``load(path, hf, **overrides)``,
``save(model, params, path)``, ``handles(model)``; tensors are read through ``hf.read_tensors``
(safetensors only, never pickle). torch ``Linear`` stores [out, in]; our ``Dense`` kernels are
[in, out], so every dense weight is transposed:

    bert.embeddings.{word,position,token_type}_embeddings.weight   -> {word,position,token_type}_embeddings
    bert.embeddings.LayerNorm                                      -> embed_ln
    bert.encoder.layer.{i}.attention.self.{query,key,value}  [HK, D] -> layer_{i}.{query,key,value} [D, H, K]
    bert.encoder.layer.{i}.attention.output.dense   [D, HK]         -> layer_{i}.out [H, K, D]
    bert.encoder.layer.{i}.attention.output.LayerNorm               -> layer_{i}.attn_ln
    bert.encoder.layer.{i}.intermediate.dense       [F, D]          -> layer_{i}.fc [D, F]
    bert.encoder.layer.{i}.output.dense / .LayerNorm                -> layer_{i}.proj [F, D] / mlp_ln
    cls.predictions.transform.dense / .LayerNorm                    -> mlm_transform / mlm_ln
    cls.predictions.bias (= cls.predictions.decoder.bias)           -> mlm_bias
    cls.predictions.decoder.weight                                   tied to the word embeddings (checked)

The pooler and the next-sentence head of ``BertForPreTraining`` (``bert.pooler.*``,
``cls.seq_relationship.*``) are not part of the masked-LM model and are skipped on load.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lineage_jax.config import BERT_ACTIVATIONS, BertConfig, ConfigError
from lineage_jax.interop.hf import InteropError, read_tensors, replace_fields, write_checkpoint
from lineage_jax.models.bert import Bert

SKIPPED = ("bert.pooler.", "cls.seq_relationship.", "bert.embeddings.position_ids")


def handles(model) -> bool:
    return isinstance(model, Bert)


def _config(hf: dict, path: Path, overrides: dict):
    checks = (("position_embedding_type", "absolute"), ("is_decoder", False), ("add_cross_attention", False),
              ("tie_word_embeddings", True))
    for key, want in checks:
        if hf.get(key, want) != want:
            raise InteropError(f"{path}: {key}={hf[key]!r} is not supported (only {want!r}, as in BERT)")
    act = hf.get("hidden_act", "gelu")
    if act not in BERT_ACTIVATIONS:
        raise InteropError(f"{path}: hidden_act={act!r} is not supported; supported: {', '.join(BERT_ACTIVATIONS)}")
    try:
        cfg = BertConfig(vocab_size=int(hf["vocab_size"]), width=int(hf["hidden_size"]),
                         heads=int(hf["num_attention_heads"]), layers=int(hf["num_hidden_layers"]),
                         mlp_dim=int(hf["intermediate_size"]), max_positions=int(hf["max_position_embeddings"]),
                         type_vocab_size=int(hf.get("type_vocab_size", 2)),
                         layernorm_eps=float(hf.get("layer_norm_eps", 1e-12)), hidden_act=act,
                         init_std=float(hf.get("initializer_range", 0.02)),
                         pad_token_id=int(hf.get("pad_token_id") or 0))
        return replace_fields(cfg, overrides, path)
    except KeyError as e:
        raise InteropError(f"{path}: config.json lacks {e.args[0]!r}, which a BERT config needs") from None
    except (TypeError, ConfigError) as e:
        raise InteropError(f"{path}: {e}") from None


def load(path: Path, hf: dict, **overrides: Any):
    """A BertForMaskedLM / BertForPreTraining directory -> ``(Bert(cfg), params)``; ``overrides`` replace
    ``BertConfig`` fields (``dtype``, ``param_dtype``, ``dropout``)."""
    cfg = _config(hf, path, overrides)
    raw = {k[:-len("gamma")] + "weight" if k.endswith("LayerNorm.gamma") else
           k[:-len("beta")] + "bias" if k.endswith("LayerNorm.beta") else k: v for k, v in read_tensors(path).items()}
    if not any(k.startswith("cls.predictions.") for k in raw):
        raise InteropError(f"{path}: no masked-LM head (cls.predictions.*), e.g. a BertModel checkpoint; "
                           f"supported: BertForMaskedLM, BertForPreTraining")
    if not any(k.startswith("bert.") for k in raw):
        raise InteropError(f"{path}: no 'bert.' encoder tensors; supported: BertForMaskedLM, BertForPreTraining")
    tensors = {k: v for k, v in raw.items() if not k.startswith(SKIPPED)}
    used: set[str] = set()

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise InteropError(f"{path}: tensor '{name}' missing from the checkpoint")
        a = np.asarray(tensors[name], np.float32)
        if a.shape != shape:
            raise InteropError(f"{path}: tensor '{name}' has shape {a.shape}, config.json implies {shape}")
        used.add(name)
        return a

    D, H, F, V = cfg.width, cfg.heads, cfg.mlp_dim, cfg.vocab_size
    K = D // H
    ln = lambda p: {"scale": get(p + ".weight", (D,)), "bias": get(p + ".bias", (D,))}
    dense = lambda p, i, o: {"kernel": get(p + ".weight", (o, i)).T, "bias": get(p + ".bias", (o,))}
    e = "bert.embeddings."
    params: dict[str, Any] = {
        "word_embeddings": get(e + "word_embeddings.weight", (V, D)),
        "position_embeddings": get(e + "position_embeddings.weight", (cfg.max_positions, D)),
        "token_type_embeddings": get(e + "token_type_embeddings.weight", (cfg.type_vocab_size, D)),
        "embed_ln": ln(e + "LayerNorm")}
    for i in range(cfg.layers):
        p = f"bert.encoder.layer.{i}."
        layer = {n: {"kernel": get(p + f"attention.self.{n}.weight", (D, D)).T.reshape(D, H, K),
                     "bias": get(p + f"attention.self.{n}.bias", (D,)).reshape(H, K)}
                 for n in ("query", "key", "value")}
        layer["out"] = {"kernel": get(p + "attention.output.dense.weight", (D, D)).T.reshape(H, K, D),
                        "bias": get(p + "attention.output.dense.bias", (D,))}
        layer.update(attn_ln=ln(p + "attention.output.LayerNorm"), fc=dense(p + "intermediate.dense", D, F),
                     proj=dense(p + "output.dense", F, D), mlp_ln=ln(p + "output.LayerNorm"))
        params[f"layer_{i}"] = layer
    c = "cls.predictions."
    params.update(mlm_transform=dense(c + "transform.dense", D, D), mlm_ln=ln(c + "transform.LayerNorm"),
                  mlm_bias=get(c + "bias", (V,)))
    if c + "decoder.weight" in tensors and not np.array_equal(get(c + "decoder.weight", (V, D)),
                                                                params["word_embeddings"]):
        raise InteropError(f"{path}: cls.predictions.decoder.weight differs from the word embeddings (untied "
                           f"MLM head); only tied heads are supported, as in BERT")
    if c + "decoder.bias" in tensors and not np.array_equal(get(c + "decoder.bias", (V,)), params["mlm_bias"]):
        raise InteropError(f"{path}: cls.predictions.decoder.bias differs from cls.predictions.bias")
    extra = sorted(set(tensors) - used)
    if extra:
        raise InteropError(f"{path}: unexpected tensor '{extra[0]}' ({len(extra)} in all) for a BERT masked-LM "
                           f"with {cfg.layers} layers")
    model = Bert(cfg)
    pdtype = jnp.dtype(cfg.param_dtype)
    return model, jax.tree.map(lambda a: jnp.asarray(a, pdtype), params)


def hf_config(cfg) -> dict:
    """The ``config.json`` of a ``BertForMaskedLM`` equal to ``Bert(cfg)``."""
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.width, "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
            "intermediate_size": cfg.mlp_dim, "hidden_act": cfg.hidden_act,
            "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.layernorm_eps, "initializer_range": cfg.init_std, "pad_token_id": cfg.pad_token_id,
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": 0.0, "tie_word_embeddings": True,
            "is_decoder": False, "add_cross_attention": False, "dtype": "float32"}


def save(model, params, path: Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` (float32) that ``BertForMaskedLM.from_pretrained`` loads
    with no missing or unexpected keys (the decoder weight is tied, so not stored)."""
    cfg = model.cfg
    D = cfg.width
    P = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), params)
    t: dict[str, np.ndarray] = {}
    ln = lambda name, p: t.update({name + ".weight": p["scale"], name + ".bias": p["bias"]})
    dense = lambda name, p: t.update({name + ".weight": p["kernel"].T, name + ".bias": p["bias"]})
    e = "bert.embeddings."
    for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        t[e + n + ".weight"] = P[n]
    ln(e + "LayerNorm", P["embed_ln"])
    for i in range(cfg.layers):
        p, L = f"bert.encoder.layer.{i}.", P[f"layer_{i}"]
        for n in ("query", "key", "value"):
            t[p + f"attention.self.{n}.weight"] = L[n]["kernel"].reshape(D, D).T
            t[p + f"attention.self.{n}.bias"] = L[n]["bias"].reshape(D)
        t[p + "attention.output.dense.weight"] = L["out"]["kernel"].reshape(D, D).T
        t[p + "attention.output.dense.bias"] = L["out"]["bias"]
        ln(p + "attention.output.LayerNorm", L["attn_ln"])
        dense(p + "intermediate.dense", L["fc"])
        dense(p + "output.dense", L["proj"])
        ln(p + "output.LayerNorm", L["mlp_ln"])
    dense("cls.predictions.transform.dense", P["mlm_transform"])
    ln("cls.predictions.transform.LayerNorm", P["mlm_ln"])
    t["cls.predictions.bias"] = P["mlm_bias"]
    write_checkpoint(Path(path), t, hf_config(cfg))
