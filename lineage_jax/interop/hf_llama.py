"""Hugging Face Llama, Mistral and Mixtral checkpoints in and out of ``lineage_jax.models.llama.Llama``.

The family protocol of ``lineage_jax/interop/hf.py``: ``load(path, hf, **overrides) -> (model,
params)``, ``save(model, params, path)``, ``handles(model)``. Tensors are read with
``hf.read_tensors`` (safetensors only, never a pickle).

torch ``Linear`` weights are [out, in]; our ``Dense`` kernels are [in, *out], so every matrix
is transposed and the head axes split out:

    layers.{i}.self_attn.q_proj     [H·K, D]    -> blocks/attn/query/kernel [D, H, K]
    layers.{i}.self_attn.{k,v}_proj [Hkv·K, D]  -> blocks/attn/{key,value}/kernel [D, Hkv, K]
    layers.{i}.self_attn.o_proj     [D, H·K]    -> blocks/attn/out/kernel [H, K, D]
    layers.{i}.mlp.{gate,up}_proj   [F, D]      -> blocks/mlp/{gate,up}/kernel [D, F]
    layers.{i}.mlp.down_proj        [D, F]      -> blocks/mlp/down/kernel [F, D]
    layers.{i}.input_layernorm      [D]         -> blocks/attn_norm/scale
    layers.{i}.post_attention_layernorm [D]     -> blocks/mlp_norm/scale
    norm [D], embed_tokens [V, D], lm_head [V, D] -> norm/scale, wte, lm_head [D, V] (untied only)

Mixtral's MoE (``block_sparse_moe`` as the hub's checkpoints and transformers' ``save_pretrained``
write it; transformers 5's fused in-memory layout ``mlp.experts.gate_up_proj`` is read too):

    block_sparse_moe.gate               [E, D]  -> blocks/moe/router/kernel [D, E]
    block_sparse_moe.experts.{e}.w1/w3  [F, D]  -> blocks/moe/w_gate[e], w_up[e] [D, F]
    block_sparse_moe.experts.{e}.w2     [D, F]  -> blocks/moe/w_down[e] [F, D]

Both sides use the rotate-half RoPE layout (HF's conversion script already permuted Meta's
interleaved q/k weights; ``attention/positions.py`` has the converter), so no permutation here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lineage_jax.config import Config, ConfigError, ModelConfig, ffn_dim, validate
from lineage_jax.interop.hf import (InteropError, read_tensors, replace_fields, stack_layers, unstack_layers,
                                    write_checkpoint)
from lineage_jax.models.gpt import padded_vocab
from lineage_jax.models.llama import Llama

TYPES = ("llama", "mistral", "mixtral")
# Hugging Face defaults where a config.json leaves a field out (LlamaConfig / MistralConfig / MixtralConfig)
_DEFAULTS = {"llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048},
             "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096 * 32},
             "mixtral": {"rms_norm_eps": 1e-5, "rope_theta": 1e6, "max_position_embeddings": 4096 * 32}}
_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM"}


def handles(model) -> bool:
    return isinstance(model, Llama)


# --------------------------------------------------------------------------- config

def _rope_theta(hf: dict, path: Path, kind: str) -> float:
    """RoPE base from ``rope_parameters`` (transformers 5) or ``rope_theta`` (4.x); scaled RoPE refused."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    for what in (params, scaling or {}):
        rtype = what.get("rope_type", what.get("type", "default"))
        if rtype not in (None, "default"):
            raise InteropError(f"{path}: rope type '{rtype}' is not supported; only unscaled RoPE (rope_scaling "
                               f"null, rope_type 'default')")
        if float(what.get("partial_rotary_factor", 1.0)) != 1.0:
            raise InteropError(f"{path}: partial_rotary_factor={what['partial_rotary_factor']} is not supported "
                               f"(RoPE on the whole head dim only)")
    return float(params.get("rope_theta") or hf.get("rope_theta") or _DEFAULTS[kind]["rope_theta"])


def model_config(hf: dict, path: Path, overrides: dict) -> ModelConfig:
    """config.json of a Llama / Mistral / Mixtral -> ModelConfig (arch llama), overrides applied, validated."""
    kind = hf["model_type"]
    if kind not in TYPES:
        raise InteropError(f"{path}: model_type '{kind}' is not handled here; supported: {', '.join(TYPES)}")
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in need if hf.get(k) is None]
    if missing:
        raise InteropError(f"{path}: config.json lacks '{missing[0]}' (needed: {', '.join(need)})")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise InteropError(f"{path}: hidden_act '{act}' is not supported; supported: silu (SwiGLU)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise InteropError(f"{path}: {key}=true is not supported (Llama-style layers have no biases)")
    D, H = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if D % H:
        raise InteropError(f"{path}: num_attention_heads={H} does not divide hidden_size={D}")
    if hf.get("head_dim") not in (None, D // H):
        raise InteropError(f"{path}: head_dim={hf['head_dim']} is not hidden_size/num_attention_heads={D // H}; "
                           f"only K = D / H is supported")
    d = _DEFAULTS[kind]
    fields = dict(arch="llama", vocab_size=int(hf["vocab_size"]), layers=int(hf["num_hidden_layers"]), width=D,
                  heads=H, kv_heads=int(hf.get("num_key_value_heads") or H), mlp_dim=int(hf["intermediate_size"]),
                  context=int(hf.get("max_position_embeddings") or d["max_position_embeddings"]),
                  rope_theta=_rope_theta(hf, path, kind),
                  layernorm_eps=float(hf.get("rms_norm_eps", d["rms_norm_eps"])),
                  tied=bool(hf.get("tie_word_embeddings", False)), init_std=float(hf.get("initializer_range", 0.02)),
                  dropout=0.0, scan_layers=True, attn_chunks=1)
    if kind == "mixtral":
        fields.update(moe_every=1, experts=int(hf.get("num_local_experts", 8)),
                      moe_k=int(hf.get("num_experts_per_tok", 2)), moe_backend="dropless")   # Mixtral drops no token
        fields["moe_aux_weight"] = float(hf.get("router_aux_loss_coef", 0.001))
    mc = replace_fields(ModelConfig(**fields), overrides, path)
    window = hf.get("sliding_window")
    if window is not None and int(window) < mc.context:
        raise InteropError(f"{path}: sliding_window={window} is smaller than the context {mc.context}; sliding-window "
                           f"attention is not implemented: load with context={window} (or less)")
    check(mc, path)
    return mc


def check(mc: ModelConfig, path) -> None:
    """``config.validate`` on the model fields; MoE fields checked here for arch llama (Mixtral)."""
    if mc.moe_every not in (0, 1):
        raise InteropError(f"{path}: model.moe_every={mc.moe_every}: a Mixtral stack is MoE in every block (1)")
    if mc.moe_every and (mc.experts < 2 or not 1 <= mc.moe_k <= mc.experts):
        raise InteropError(f"{path}: num_local_experts={mc.experts}, num_experts_per_tok={mc.moe_k}: need experts >= 2 "
                           f"and 1 <= experts per token <= experts")
    try:
        validate(Config(model=mc))
    except ConfigError as e:
        raise InteropError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- reading

def _layer(get, has, i: int, mc: ModelConfig) -> dict:
    D, H, Hkv, K, F, E = mc.width, mc.heads, mc.kv_heads or mc.heads, mc.width // mc.heads, mc.mlp_dim, mc.experts
    p = f"layers.{i}."
    heads = lambda name, n: {"kernel": get(p + f"self_attn.{name}.weight", (n * K, D)).T.reshape(D, n, K)}
    attn = {"query": heads("q_proj", H), "key": heads("k_proj", Hkv), "value": heads("v_proj", Hkv),
            "out": {"kernel": get(p + "self_attn.o_proj.weight", (D, H * K)).T.reshape(H, K, D)}}
    out = {"attn": attn, "attn_norm": {"scale": get(p + "input_layernorm.weight", (D,))},
           "mlp_norm": {"scale": get(p + "post_attention_layernorm.weight", (D,))}}
    if not mc.moe_every:
        out["mlp"] = {n: {"kernel": get(p + f"mlp.{n}_proj.weight", (F, D) if n != "down" else (D, F)).T}
                      for n in ("gate", "up", "down")}
        return out
    if has(p + "mlp.experts.gate_up_proj"):     # transformers 5 in-memory layout
        gu = get(p + "mlp.experts.gate_up_proj", (E, 2 * F, D))
        moe = {"router": {"kernel": get(p + "mlp.gate.weight", (E, D)).T},
               "w_gate": gu[:, :F].transpose(0, 2, 1), "w_up": gu[:, F:].transpose(0, 2, 1),
               "w_down": get(p + "mlp.experts.down_proj", (E, D, F)).transpose(0, 2, 1)}
    else:                                       # the hub's layout (and what save_pretrained writes)
        q = p + "block_sparse_moe."
        w = lambda n, shape: np.stack([get(q + f"experts.{e}.{n}.weight", shape).T for e in range(E)])
        moe = {"router": {"kernel": get(q + "gate.weight", (E, D)).T},
               "w_gate": w("w1", (F, D)), "w_up": w("w3", (F, D)), "w_down": w("w2", (D, F))}
    out["moe"] = moe
    return out


def load(path: Path, hf: dict, **overrides: Any):
    """A Hugging Face Llama / Mistral / Mixtral directory -> ``(Llama(cfg), params)``; ``overrides`` replace
    ModelConfig fields (``context``, ``scan_layers``, ``attn_chunks``, ``vocab_multiple``, ``dtype``, ...)."""
    path = Path(path)
    mc = model_config(hf, path, overrides)
    raw = read_tensors(path)
    tensors = {k[len("model."):] if k.startswith("model.") else k: v for k, v in raw.items()}
    head = tensors.pop("lm_head.weight", None)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}   # old buffers
    used: set[str] = set()

    def get(name: str, shape) -> np.ndarray:
        if name not in tensors:
            raise InteropError(f"{path}: tensor 'model.{name}' missing from the checkpoint")
        a = np.asarray(tensors[name], np.float32)
        if a.shape != tuple(shape):
            raise InteropError(f"{path}: tensor 'model.{name}' has shape {a.shape}, config.json implies {tuple(shape)}")
        used.add(name)
        return a

    layers = [_layer(get, tensors.__contains__, i, mc) for i in range(mc.layers)]
    V, D = padded_vocab(mc), mc.width
    wte = get("embed_tokens.weight", (mc.vocab_size, D))
    params: dict[str, Any] = {"wte": np.pad(wte, ((0, V - mc.vocab_size), (0, 0))),
                              "norm": {"scale": get("norm.weight", (D,))}}
    if mc.tied:
        if head is not None and not np.array_equal(np.asarray(head, np.float32), wte):
            raise InteropError(f"{path}: tie_word_embeddings=true but lm_head.weight differs from embed_tokens")
    else:
        if head is None:
            raise InteropError(f"{path}: tie_word_embeddings=false but the checkpoint has no lm_head.weight")
        head = np.asarray(head, np.float32)
        if head.shape != (mc.vocab_size, D):
            raise InteropError(f"{path}: lm_head.weight has shape {head.shape}, config.json implies "
                               f"{(mc.vocab_size, D)}")
        params["lm_head"] = np.pad(head.T, ((0, 0), (0, V - mc.vocab_size)))
    extra = sorted(set(tensors) - used)
    if extra:
        raise InteropError(f"{path}: unexpected tensor '{extra[0]}' ({len(extra)} in all) for model_type "
                           f"{hf['model_type']}")
    params.update(stack_layers(layers, mc.scan_layers))
    model = Llama(mc)
    want = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 2), np.int32))))["params"]
    if jax.tree.structure(want) != jax.tree.structure(params):  # pragma: no cover - a mapping bug, not user input
        raise InteropError(f"{path}: parameter tree does not match Llama({mc})")
    for (kp, w), p in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(params)):
        if tuple(w.shape) != tuple(p.shape):  # pragma: no cover - shapes were checked tensor by tensor
            raise InteropError(f"{path}: {jax.tree_util.keystr(kp)} has shape {p.shape}, the model needs {w.shape}")
    pdtype = np.dtype(jax.numpy.dtype(mc.param_dtype))
    return model, jax.tree.map(lambda a: jax.numpy.asarray(a.astype(pdtype)), params)


# --------------------------------------------------------------------------- writing

def hf_config(mc: ModelConfig, model_type: str | None = None) -> dict:
    """The ``config.json`` of the transformers model equal to ``Llama(mc)``: ``llama`` (or ``mistral``,
    sliding window off) for a dense stack, ``mixtral`` for an MoE one."""
    kind = model_type or ("mixtral" if mc.moe_every else "llama")
    if kind not in TYPES or (kind == "mixtral") != bool(mc.moe_every):
        allowed = "mixtral" if mc.moe_every else "llama, mistral"
        raise InteropError(f"save: model_type '{kind}' cannot hold this model; allowed: {allowed}")
    out = {"architectures": [_ARCH[kind]], "model_type": kind, "vocab_size": mc.vocab_size, "hidden_size": mc.width,
           "intermediate_size": ffn_dim(mc), "num_hidden_layers": mc.layers,
           "num_attention_heads": mc.heads, "num_key_value_heads": mc.kv_heads or mc.heads,
           "head_dim": mc.width // mc.heads, "hidden_act": "silu", "max_position_embeddings": mc.context,
           "initializer_range": mc.init_std, "rms_norm_eps": mc.layernorm_eps, "tie_word_embeddings": mc.tied,
           "rope_theta": mc.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": mc.rope_theta},
           "rope_scaling": None, "attention_dropout": 0.0, "bos_token_id": None, "eos_token_id": None,
           "use_cache": True, "dtype": "float32"}
    if kind == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    else:
        out["sliding_window"] = None
    if kind == "mixtral":
        out.update(num_local_experts=mc.experts, num_experts_per_tok=mc.moe_k, router_jitter_noise=0.0,
                   router_aux_loss_coef=getattr(mc, "moe_aux_weight", 0.001), output_router_logits=False)
    return out


def save(model, params, path: Path, model_type: str | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (float32) that ``LlamaForCausalLM`` (``model_type``
    llama, the default for a dense model), ``MistralForCausalLM`` (mistral) or ``MixtralForCausalLM`` (an MoE
    model) load with no missing or unexpected keys. ``params`` may be scanned or not."""
    mc: ModelConfig = model.cfg
    config = hf_config(mc, model_type)
    H, Hkv, K, V = mc.heads, mc.kv_heads or mc.heads, mc.width // mc.heads, mc.vocab_size
    host = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), params)
    layers = unstack_layers(host, mc.layers)
    t = {"model.embed_tokens.weight": host["wte"][:V], "model.norm.weight": host["norm"]["scale"]}
    if not mc.tied:
        t["lm_head.weight"] = host["lm_head"][:, :V].T
    for i, layer in enumerate(layers):
        p, a = f"model.layers.{i}.", layer["attn"]
        t[p + "self_attn.q_proj.weight"] = a["query"]["kernel"].reshape(mc.width, H * K).T
        t[p + "self_attn.k_proj.weight"] = a["key"]["kernel"].reshape(mc.width, Hkv * K).T
        t[p + "self_attn.v_proj.weight"] = a["value"]["kernel"].reshape(mc.width, Hkv * K).T
        t[p + "self_attn.o_proj.weight"] = a["out"]["kernel"].reshape(H * K, mc.width).T
        t[p + "input_layernorm.weight"] = layer["attn_norm"]["scale"]
        t[p + "post_attention_layernorm.weight"] = layer["mlp_norm"]["scale"]
        if mc.moe_every:
            m, q = layer["moe"], p + "block_sparse_moe."
            t[q + "gate.weight"] = m["router"]["kernel"].T
            for e in range(mc.experts):
                for ours, theirs in (("w_gate", "w1"), ("w_down", "w2"), ("w_up", "w3")):
                    t[q + f"experts.{e}.{theirs}.weight"] = m[ours][e].T
        else:
            for n in ("gate", "up", "down"):
                t[p + f"mlp.{n}_proj.weight"] = layer["mlp"][n]["kernel"].T
    write_checkpoint(Path(path), t, config)
