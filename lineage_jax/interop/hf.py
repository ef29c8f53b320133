"""Hugging Face GPT-2 checkpoints in and out: ``load(dir) -> (model, params)``, ``save(model, params, dir)``.

A Hugging Face directory is ``config.json`` (a ``GPT2Config``) plus ``model.safetensors``
(or shards listed in ``model.safetensors.index.json``). Only safetensors is read: a
``pytorch_model.bin`` is a pickle and is refused, never unpickled.

GPT-2's ``Conv1D`` stores weights [in, out], the same order as our ``Dense`` kernels, so
the mapping is reshapes only:

    h.{i}.attn.c_attn   [D, 3D] (q|k|v, heads h*K+k)  -> attn.{query,key,value}.kernel [D, H, K], bias [H, K]
    h.{i}.attn.c_proj   [D, D]                         -> attn.out.kernel [H, K, D], bias [D]
    h.{i}.mlp.c_fc      [D, F]                         -> mlp.fc.kernel [D, F]
    h.{i}.mlp.c_proj    [F, D]                         -> mlp.proj.kernel [F, D]
    h.{i}.ln_1 / ln_2, ln_f (weight, bias)             -> ln1 / ln2, ln_f (scale, bias)
    wte [V, D], wpe [T, D]                             -> wte (rows padded to vocab_multiple), wpe

Per-layer weights are stacked along a leading ``layers`` axis for the scanned model
(``blocks``) or kept as ``blocks_{i}`` when ``scan_layers`` is false. The output head is
tied to ``wte`` on both sides, as in GPT-2.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import yaml

from lineage_jax.config import Config, ConfigError, DataConfig, MeshConfig, ModelConfig, UserError, validate
from lineage_jax.models.gpt import GPT, padded_vocab
from lineage_jax.runs import atomic, checkpoint as ckpt
from lineage_jax.train.setup import build

SUPPORTED = "gpt2 (GPT2LMHeadModel / GPT2Model)"
# Other families live in their own modules, each exposing
#   load(path: Path, hf: dict, **overrides) -> (model, params)
#   save(model, params, path: Path) -> None
#   handles(model) -> bool               (is this one of this family's models?)
# and reading tensors through ``read_tensors`` below. model_type -> module:
FAMILIES = {"llama": "lineage_jax.interop.hf_llama", "mistral": "lineage_jax.interop.hf_llama",
            "mixtral": "lineage_jax.interop.hf_llama", "bert": "lineage_jax.interop.hf_bert",
            "t5": "lineage_jax.interop.hf_t5"}
_BUFFERS = (".attn.bias", ".attn.masked_bias")    # causal-mask buffers some older checkpoints carry
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")     # what our MLP computes (tanh approximation)


class InteropError(UserError, ValueError):
    """A checkpoint this module cannot read or write, stated in one line."""


# --------------------------------------------------------------------------- reading

def _read_config(path: Path) -> dict:
    if not path.is_dir():
        raise InteropError(f"{path}: no such directory (expected a Hugging Face checkpoint: config.json + "
                           f"model.safetensors)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InteropError(f"{path}: no config.json (expected a Hugging Face checkpoint: config.json + "
                           f"model.safetensors)")
    try:
        hf = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InteropError(f"{cfg_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InteropError(f"{cfg_file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(hf, dict):
        raise InteropError(f"{cfg_file}: expected a JSON object of settings, got a {type(hf).__name__}")
    kind = hf.get("model_type")
    if kind != "gpt2" and kind not in FAMILIES:
        raise InteropError(f"{path}: model_type '{kind}' is not supported; supported: gpt2, "
                           f"{', '.join(FAMILIES)}")
    return hf


def _family(name: str):
    return importlib.import_module(FAMILIES[name])


GPT2_NEEDS = ("vocab_size", "n_positions", "n_layer", "n_embd", "n_head")   # config.json keys with no default


def _model_config(hf: dict, path: Path, overrides: dict) -> ModelConfig:
    missing = [k for k in GPT2_NEEDS if k not in hf]
    if missing:
        raise InteropError(f"{path / 'config.json'}: lacks {', '.join(repr(k) for k in missing)}, which a GPT-2 "
                           f"config needs (needed: {', '.join(GPT2_NEEDS)})")
    bad = [k for k in GPT2_NEEDS if isinstance(hf[k], bool) or not isinstance(hf[k], int) or hf[k] < 1]
    if bad:
        raise InteropError(f"{path / 'config.json'}: {bad[0]}={hf[bad[0]]!r} must be a positive integer")
    act = hf.get("activation_function", "gelu_new")
    if act not in _TANH_GELU:
        raise InteropError(f"{path}: activation_function '{act}' is not supported; supported: {', '.join(_TANH_GELU)}")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if hf.get(key, want) != want:
            raise InteropError(f"{path}: {key}={hf[key]} is not supported (only {want}, as in GPT-2)")
    D, inner = int(hf["n_embd"]), hf.get("n_inner")
    if inner is not None and int(inner) % D:
        raise InteropError(f"{path}: n_inner={inner} is not a multiple of n_embd={D}; this model needs "
                           f"F = mlp_ratio * width")
    mc = ModelConfig(vocab_size=int(hf["vocab_size"]), context=int(hf["n_positions"]), layers=int(hf["n_layer"]),
                     width=D, heads=int(hf["n_head"]), mlp_ratio=4 if inner is None else int(inner) // D,
                     dropout=0.0, layernorm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                     init_std=float(hf.get("initializer_range", 0.02)), scan_layers=True, attn_chunks=1)
    try:
        mc = replace_fields(mc, overrides, path)
        validate(Config(model=mc))
    except (TypeError, ConfigError) as e:
        raise InteropError(f"{path}: {e}") from None
    return mc


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (path / "pytorch_model.bin").is_file():
        raise InteropError(f"{path}: only pytorch_model.bin (a pickle), which is never read here; convert it to "
                           f"model.safetensors (save_pretrained(..., safe_serialization=True))")
    else:
        raise InteropError(f"{path}: no model.safetensors (or model.safetensors.index.json)")
    out = {}
    for f in files:
        if not f.is_file():
            raise InteropError(f"{path}: shard {f.name} listed in model.safetensors.index.json is missing")
        try:
            try:
                with safe_open(str(f), framework="np") as st:
                    out.update({k: st.get_tensor(k) for k in st.keys()})
            except (TypeError, ValueError):   # e.g. bfloat16, which numpy lacks: read through JAX instead
                with safe_open(str(f), framework="flax") as st:
                    out.update({k: np.asarray(st.get_tensor(k), np.float32) for k in st.keys()})
        except SafetensorError as e:          # truncated or garbled: the library's header/coverage checks
            raise InteropError(f"{f}: not a readable safetensors file ({e}); it may be truncated: download or "
                               f"export it again") from None
    return out


def replace_fields(cfg, overrides: dict, path: Path):
    """``dataclasses.replace(cfg, **overrides)``, naming an override that is not a field in one line."""
    names = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise InteropError(f"{path}: override '{unknown[0]}' is not a {type(cfg).__name__} field; "
                           f"allowed: {', '.join(names)}")
    return dataclasses.replace(cfg, **overrides)


def stack_layers(layers: list[dict], scan: bool) -> dict:
    """Per-layer parameter trees -> the model's layout: stacked on a leading axis under ``blocks``
    (scanned) or one ``blocks_{i}`` per layer."""
    if scan:
        return {"blocks": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
    return {f"blocks_{i}": layer for i, layer in enumerate(layers)}


def unstack_layers(host: dict, n_layers: int) -> list[dict]:
    """The inverse of ``stack_layers``: one parameter tree per layer."""
    if "blocks" in host:
        return [jax.tree.map(lambda x, i=i: x[i], host["blocks"]) for i in range(n_layers)]
    return [host[f"blocks_{i}"] for i in range(n_layers)]


def _layer_from_hf(get, i: int, H: int, K: int) -> dict:
    D = H * K
    p = f"h.{i}."
    w, b = get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias")          # [D, 3D], [3D]
    attn = {name: {"kernel": w[:, j * D:(j + 1) * D].reshape(D, H, K), "bias": b[j * D:(j + 1) * D].reshape(H, K)}
            for j, name in enumerate(("query", "key", "value"))}
    attn["out"] = {"kernel": get(p + "attn.c_proj.weight").reshape(H, K, D), "bias": get(p + "attn.c_proj.bias")}
    mlp = {"fc": {"kernel": get(p + "mlp.c_fc.weight"), "bias": get(p + "mlp.c_fc.bias")},
           "proj": {"kernel": get(p + "mlp.c_proj.weight"), "bias": get(p + "mlp.c_proj.bias")}}
    ln = lambda n: {"scale": get(p + n + ".weight"), "bias": get(p + n + ".bias")}
    return {"attn": attn, "mlp": mlp, "ln1": ln("ln_1"), "ln2": ln("ln_2")}


def load(path: str | Path, **overrides: Any):
    """A Hugging Face GPT-2 directory -> ``(GPT(cfg), params)`` with ``model.apply({"params": params}, ids)``
    giving logits [B, T, V]. ``overrides`` replace ModelConfig fields (``scan_layers``, ``attn_chunks``,
    ``vocab_multiple``, ``dtype``, ...); the architecture fields come from config.json."""
    path = Path(path)
    hf = _read_config(path)
    if hf["model_type"] != "gpt2":
        return _family(hf["model_type"]).load(path, hf, **overrides)
    mc = _model_config(hf, path, overrides)
    raw = read_tensors(path)
    prefix = "transformer." if any(k.startswith("transformer.") for k in raw) else ""
    tensors = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in raw.items()}
    head = tensors.pop("lm_head.weight", None)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(_BUFFERS)}
    pdtype = np.dtype(jax.numpy.dtype(mc.param_dtype))
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise InteropError(f"{path}: tensor '{prefix}{name}' missing from the checkpoint")
        used.add(name)
        return np.asarray(tensors[name], np.float32)

    H, K = mc.heads, mc.width // mc.heads
    layers = [_layer_from_hf(get, i, H, K) for i in range(mc.layers)]
    wte = get("wte.weight")
    if head is not None and not np.array_equal(np.asarray(head, np.float32), wte):
        raise InteropError(f"{path}: lm_head.weight differs from wte (untied output head); only tied GPT-2 "
                           f"heads are supported")
    V = padded_vocab(mc)
    if wte.shape != (mc.vocab_size, mc.width):
        raise InteropError(f"{path}: wte.weight has shape {wte.shape}, config.json says ({mc.vocab_size}, {mc.width})")
    params: dict[str, Any] = {"wte": np.pad(wte, ((0, V - mc.vocab_size), (0, 0))), "wpe": get("wpe.weight"),
                              "ln_f": {"scale": get("ln_f.weight"), "bias": get("ln_f.bias")}}
    extra = sorted(set(tensors) - used)
    if extra:
        raise InteropError(f"{path}: unexpected tensor '{prefix}{extra[0]}' ({len(extra)} in all); "
                           f"supported: {SUPPORTED}")
    params.update(stack_layers(layers, mc.scan_layers))
    model = GPT(mc)
    want = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, mc.context), np.int32))))
    want = want["params"]
    if jax.tree.structure(want) != jax.tree.structure(params):  # pragma: no cover - a mapping bug, not user input
        raise InteropError(f"{path}: parameter tree does not match GPT({mc})")
    for (kp, w), p in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(params)):
        if tuple(w.shape) != tuple(p.shape):
            raise InteropError(f"{path}: {jax.tree_util.keystr(kp)} has shape {p.shape}, the model needs {w.shape}")
    params = jax.tree.map(lambda a: jax.numpy.asarray(a.astype(pdtype)), params)
    return model, params


# --------------------------------------------------------------------------- writing

def _layer_to_hf(layer: dict, H: int, K: int) -> dict[str, np.ndarray]:
    D = H * K
    a = layer["attn"]
    out = {"attn.c_attn.weight": np.concatenate([a[n]["kernel"].reshape(D, D) for n in ("query", "key", "value")], 1),
           "attn.c_attn.bias": np.concatenate([a[n]["bias"].reshape(D) for n in ("query", "key", "value")]),
           "attn.c_proj.weight": a["out"]["kernel"].reshape(D, D), "attn.c_proj.bias": a["out"]["bias"],
           "mlp.c_fc.weight": layer["mlp"]["fc"]["kernel"], "mlp.c_fc.bias": layer["mlp"]["fc"]["bias"],
           "mlp.c_proj.weight": layer["mlp"]["proj"]["kernel"], "mlp.c_proj.bias": layer["mlp"]["proj"]["bias"]}
    for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
        out[f"{theirs}.weight"], out[f"{theirs}.bias"] = layer[ours]["scale"], layer[ours]["bias"]
    return out


def hf_config(mc: ModelConfig) -> dict:
    """The ``config.json`` of a ``GPT2LMHeadModel`` equal to ``GPT(mc)``."""
    inner = mc.mlp_ratio * mc.width
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": mc.vocab_size,
            "n_positions": mc.context, "n_embd": mc.width, "n_layer": mc.layers, "n_head": mc.heads,
            "n_inner": None if mc.mlp_ratio == 4 else inner, "activation_function": "gelu_new",
            "layer_norm_epsilon": mc.layernorm_eps, "initializer_range": mc.init_std,
            "resid_pdrop": mc.dropout, "embd_pdrop": mc.dropout, "attn_pdrop": mc.dropout,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True, "bos_token_id": mc.vocab_size - 1, "eos_token_id": mc.vocab_size - 1,
            "use_cache": True, "dtype": "float32"}


def save(model, params, path: str | Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` (float32) that ``GPT2LMHeadModel.from_pretrained`` loads
    with no missing or unexpected keys. ``params`` may be scanned (``blocks``) or not (``blocks_{i}``)."""
    if not isinstance(model, GPT):
        for name in dict.fromkeys(FAMILIES.values()):
            family = importlib.import_module(name)
            if family.handles(model):
                return family.save(model, params, Path(path))
        raise InteropError(f"save: no Hugging Face writer for {type(model).__name__}")

    mc: ModelConfig = model.cfg
    H, K = mc.heads, mc.width // mc.heads
    host = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float32), params)
    layers = unstack_layers(host, mc.layers)
    tensors = {"transformer.wte.weight": host["wte"][:mc.vocab_size], "transformer.wpe.weight": host["wpe"],
               "transformer.ln_f.weight": host["ln_f"]["scale"], "transformer.ln_f.bias": host["ln_f"]["bias"]}
    for i, layer in enumerate(layers):
        tensors.update({f"transformer.h.{i}.{k}": v for k, v in _layer_to_hf(layer, H, K).items()})
    write_checkpoint(Path(path), tensors, hf_config(mc))


def write_checkpoint(path: Path, tensors: dict[str, np.ndarray], config: dict) -> None:
    """``model.safetensors`` (float32, ``format: pt``) then ``config.json`` into ``path``, each written to a
    temporary file and renamed over the old one, so a kill mid-export never leaves a half-written file."""
    from safetensors.numpy import save_file
    path.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path / "model.safetensors") as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    atomic.write_text(path / "config.json", json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------- a lineage run directory

def convert_to_run_dir(hf_dir: str | Path, run_dir: str | Path, *, tokenizer: str | None = None,
                       **overrides: Any) -> Path:
    """A Hugging Face directory of any family ``load`` reads (GPT-2, Llama, Mistral, Mixtral, ...) -> a lineage
    run directory (``config.yaml`` with the loaded ModelConfig, e.g. ``model.arch: llama``, + an Orbax
    checkpoint at step 0 of a fresh TrainState holding the loaded parameters), so ``lineage sample
    --run-dir`` works on it and ``lineage train RUN/config.yaml train.steps=N`` fine-tunes it.

    ``tokenizer``: a ``data.tokenizer`` value; by default ``hf_dir`` itself when it holds a
    ``tokenizer.json``, else ``byte`` (which needs vocab_size >= 257). ``overrides``: ModelConfig
    fields for ``load`` (e.g. ``context=4096`` for a Llama whose max_position_embeddings is larger than
    the KV cache you want).
    """
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    model, params = load(hf_dir, **overrides)
    if tokenizer is None:
        tokenizer = str(hf_dir.resolve()) if (hf_dir / "tokenizer.json").is_file() else "byte"
    if tokenizer == "byte" and model.cfg.vocab_size < 257:
        raise InteropError(f"{hf_dir}: vocab_size={model.cfg.vocab_size} is too small for the byte tokenizer "
                           f"(257 ids); pass tokenizer= a tokenizer.json for this vocabulary")
    return params_to_run_dir(model.cfg, tokenizer, params, run_dir, source=str(hf_dir.resolve()))


def params_to_run_dir(mc: ModelConfig, tokenizer: str, params, run_dir: str | Path, *, source: str) -> Path:
    """A new run directory holding ``params`` of a ``mc`` model as step 0 of a fresh TrainState, with
    ``config.yaml`` (``data.tokenizer``: ``tokenizer``); ``source`` goes into the checkpoint's meta."""
    run_dir = Path(run_dir)
    if ckpt.latest_step(run_dir) is not None:
        raise InteropError(f"{run_dir}: already holds a checkpoint; convert into a new run directory")
    cfg = Config(model=mc, data=DataConfig(tokenizer=tokenizer), mesh=MeshConfig(data=1), run_dir=str(run_dir))
    validate(cfg)
    setup = build(cfg, compile_steps=False, devices=jax.devices()[:1])
    state = setup.init_state(jax.random.key(cfg.train.seed))
    state = state.replace(params=jax.device_put(params, setup.state_sharding.params),
                          opt_state=jax.jit(setup.tx.init, out_shardings=setup.state_sharding.opt_state)(params))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    with ckpt.manager(run_dir, keep=cfg.train.keep_checkpoints, async_save=False) as mngr:
        ckpt.save(mngr, 0, state, {"data_position": 0, "step": 0, "source": source})
        mngr.wait_until_finished()
    return run_dir
