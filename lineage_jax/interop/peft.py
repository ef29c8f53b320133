"""LoRA adapters in and out of peft's format (``adapter_config.json`` + ``adapter_model.safetensors``)
for the Hugging Face model a base was converted from (``interop.hf``): GPT-2 and Llama/Mistral.

peft stores, per adapted torch module, ``lora_A.weight`` [r, in] and ``lora_B.weight`` [out, r] and
adds (lora_alpha/r)·B·A to the weight; ours are the same factors in our kernel layout
(``adapt.lora``: lora_a [*in, r], lora_b [r, *out]), so the mapping is transposes and reshapes:

    Llama   q/k/v/o_proj, mlp.{gate,up,down}_proj   one module per kernel (Mistral the same)
    Mixtral q/k/v/o_proj                             the experts are no ``Dense`` here: attention only
    GPT-2   attn.c_attn (q|k|v fused, Conv1D: ``fan_in_fan_out``), attn.c_proj, mlp.c_fc, mlp.c_proj

GPT-2's fused c_attn takes our q, k and v adapters as one of rank 3r: A stacked [3r, D] and B
block-diagonal [3D, 3r], with ``rank_pattern``/``alpha_pattern`` 3r / 3α so its scale is our α/r.
Reading back, a c_attn adapter gives each of q, k, v the shared A and its rows of B (exactly the
update peft applies), and block-diagonal ones split into their r-rank parts again. When the
modules' ranks or scales differ, the ranks are zero-padded to the largest and each scale folded
into its B (α = r: scale 1) — the same updates in one ``LoraConfig``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np

from lineage_jax.adapt import lora
from lineage_jax.interop.hf import InteropError, unstack_layers
from lineage_jax.runs import atomic

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LLAMA = {("attn", "query"): "self_attn.q_proj", ("attn", "key"): "self_attn.k_proj",
         ("attn", "value"): "self_attn.v_proj", ("attn", "out"): "self_attn.o_proj",
         ("mlp", "gate"): "mlp.gate_proj", ("mlp", "up"): "mlp.up_proj", ("mlp", "down"): "mlp.down_proj"}
GPT2 = {("attn", "out"): "attn.c_proj", ("mlp", "fc"): "mlp.c_fc", ("mlp", "proj"): "mlp.c_proj"}
QKV = ("query", "key", "value")


def _family(model) -> tuple[str, str]:
    """(arch, module prefix of layer i) of a converted model."""
    arch = model.cfg.arch
    if arch == "gpt2":
        return arch, "base_model.model.transformer.h.{i}."
    if arch == "llama":      # Llama, Mistral; Mixtral (MoE) through its attention modules
        return arch, "base_model.model.model.layers.{i}."
    raise InteropError(f"peft: {arch} has no peft mapping here; supported: gpt2, llama / mistral / mixtral")


def _matrices(ad: dict) -> tuple[np.ndarray, np.ndarray]:
    """(A [r, in], B [out, r]) of one of our adapters (layer-local)."""
    a, b = np.asarray(ad["lora_a"], np.float32), np.asarray(ad["lora_b"], np.float32)
    r = a.shape[-1]
    return a.reshape(-1, r).T, b.reshape(r, -1).T


def to_peft(model, adapters, cfg: lora.LoraConfig) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, adapter_config) of ``adapters`` for the Hugging Face twin of ``model``."""
    arch, prefix = _family(model)
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), adapters)
    tensors, modules, ranks = {}, set(), {}
    layers = unstack_layers(host, model.cfg.layers)
    if model.cfg.moe_every and any(layer.get("mlp") for layer in layers):
        raise InteropError("peft export: a model with MoE layers maps onto Hugging Face Mixtral, whose feed-forward "
                           "is experts only; adapt its attention (--lora-targets q,k,v,o)")
    for i, layer in enumerate(layers):
        p = prefix.format(i=i)
        for (group, name), mod in (LLAMA if arch == "llama" else GPT2).items():
            ad = layer.get(group, {}).get(name)
            if ad is not None:
                A, B = _matrices(ad)
                tensors[p + mod + ".lora_A.weight"], tensors[p + mod + ".lora_B.weight"] = A, B
                modules.add(mod)
        if arch == "gpt2" and any(n in layer.get("attn", {}) for n in QKV):
            D, r = model.cfg.width, cfg.rank
            A, B = np.zeros((3 * r, D), np.float32), np.zeros((3 * D, 3 * r), np.float32)
            for j, n in enumerate(QKV):
                if n in layer["attn"]:
                    A[j * r:(j + 1) * r], B[j * D:(j + 1) * D, j * r:(j + 1) * r] = _matrices(layer["attn"][n])
            tensors[p + "attn.c_attn.lora_A.weight"], tensors[p + "attn.c_attn.lora_B.weight"] = A, B
            modules.add("attn.c_attn")
            ranks["attn.c_attn"] = 3 * r
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank, "lora_alpha": cfg.alpha,
              "target_modules": r".*\.(" + "|".join(re.escape(m) for m in sorted(modules)) + r")",
              "rank_pattern": ranks, "alpha_pattern": {k: v * cfg.alpha / cfg.rank for k, v in ranks.items()},
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": arch == "gpt2", "use_rslora": False,
              "use_dora": False, "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
              "base_model_name_or_path": None}
    return tensors, config


def save(model, adapters, cfg: lora.LoraConfig, path: str | Path, base_model: str | None = None) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` that ``PeftModel.from_pretrained``
    loads over the Hugging Face model ``interop.hf.save`` writes for ``model``."""
    from safetensors.numpy import save_file
    tensors, config = to_peft(model, adapters, cfg)
    config["base_model_name_or_path"] = base_model
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path / WEIGHTS) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    atomic.write_text(path / CONFIG, json.dumps(config, indent=2) + "\n")
    return path


def _pattern_value(patterns: dict, module: str, default):
    for key, val in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return val
    return default


def load(path: str | Path, model, params, specs) -> tuple[dict, lora.LoraConfig]:
    """A peft LoRA directory -> (adapters, LoraConfig) for ``model`` with ``params`` / logical ``specs``:
    ``lora.merge(params, adapters, cfg)`` is the model peft computes."""
    from safetensors.numpy import load_file
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise InteropError(f"{path}: not a peft adapter directory (needs {CONFIG} and {WEIGHTS})")
    conf = json.loads((path / CONFIG).read_text())
    if conf.get("peft_type") != "LORA" or conf.get("use_rslora") or conf.get("use_dora"):
        raise InteropError(f"{path}: peft_type {conf.get('peft_type')} (rslora={conf.get('use_rslora')}, "
                           f"dora={conf.get('use_dora')}); only plain LoRA is read")
    tensors = {k.replace(".default", ""): v for k, v in load_file(str(path / WEIGHTS)).items()}
    arch, prefix = _family(model)
    table = dict(LLAMA if arch == "llama" else GPT2)
    parts: dict = {}        # (layer, group, name) -> (A, B, scale)
    used = set()
    for i in range(model.cfg.layers):
        p = prefix.format(i=i)
        mods = list(table.items()) + ([(("attn", n), "attn.c_attn") for n in QKV] if arch == "gpt2" else [])
        for (group, name), mod in mods:
            ka, kb = p + mod + ".lora_A.weight", p + mod + ".lora_B.weight"
            if ka not in tensors:
                continue
            used.update((ka, kb))
            A, B = tensors[ka].astype(np.float32), tensors[kb].astype(np.float32)
            r = _pattern_value(conf.get("rank_pattern") or {}, mod, conf["r"])
            s = _pattern_value(conf.get("alpha_pattern") or {}, mod, conf["lora_alpha"]) / r
            if mod == "attn.c_attn":
                j, D = QKV.index(name), model.cfg.width
                B = B[j * D:(j + 1) * D]
                if r % 3 == 0:     # block-diagonal (what ``save`` writes): the rank-r/3 part alone
                    k = r // 3
                    off = np.delete(B, np.s_[j * k:(j + 1) * k], axis=1)
                    if not off.any():
                        A, B = A[j * k:(j + 1) * k], B[:, j * k:(j + 1) * k]
            parts[(i, group, name)] = (A, B, s)
    extra = sorted(set(tensors) - used)
    if extra or not parts:
        raise InteropError(f"{path}: tensor '{extra[0] if extra else '(none)'}' does not map onto this "
                           f"{arch} model's q/k/v/o/mlp modules")
    rank = max(A.shape[0] for A, _, _ in parts.values())
    scales = {s for _, _, s in parts.values()}
    same = len(scales) == 1 and all(A.shape[0] == rank for A, _, _ in parts.values())
    scale = scales.pop() if same else 1.0
    targets = sorted({k for k, pat in lora.TARGETS.items()
                      if any(re.fullmatch(pat, f"{g}/{n}") for _, g, n in parts)})
    cfg = lora.LoraConfig(rank=rank, alpha=scale * rank, targets=tuple(targets))
    shapes = lora.targets(params, specs, cfg)
    adapters: dict = {}
    for kpath, (shape, axes) in shapes.items():
        sa, sb, _, _ = lora.adapter_shapes(shape, axes, rank)
        lead = lora.split_axes(axes)[0]
        layers = range(shape[0]) if lead else [int(kpath[0].split("_")[-1])]
        a_all, b_all = np.zeros(sa, np.float32), np.zeros(sb, np.float32)
        for i in layers:
            A, B, s = parts.get((i, kpath[-3], kpath[-2]), (None, None, None))
            if A is None:
                continue
            r = A.shape[0]
            a = np.zeros((A.shape[1], rank), np.float32)
            b = np.zeros((rank, B.shape[0]), np.float32)
            a[:, :r], b[:r] = A.T, B.T * (s / scale)
            at, bt = (a_all[i], b_all[i]) if lead else (a_all, b_all)
            at[...] = a.reshape(at.shape)
            bt[...] = b.reshape(bt.shape)
        node = adapters
        for k in kpath[:-2]:
            node = node.setdefault(k, {})
        node[kpath[-2]] = {"lora_a": a_all, "lora_b": b_all}
    return adapters, cfg
