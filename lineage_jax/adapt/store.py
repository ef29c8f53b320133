"""An adapter on disk: the record a fine-tuning run directory keeps (``adapter.json``: which base, which
LoRA, which quantisation) and a standalone adapter file (safetensors: a few MB, no pickle).

A fine-tuning run directory is an ordinary run directory (``config.yaml`` is the base model's config,
``checkpoints/`` hold the adapters and their optimiser state) plus ``adapter.json``; its base is
another run directory (a Hugging Face checkpoint is converted into ``base/`` inside it first).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from lineage_jax.adapt.lora import LoraConfig
from lineage_jax.config.errors import UserError
from lineage_jax.runs import atomic

ADAPTER_JSON = "adapter.json"
QUANT = ("none", "nf4", "int8")


class AdapterError(UserError, ValueError):
    """An adapter record or file that cannot be used, in one line."""


@dataclasses.dataclass(frozen=True)
class Record:
    lora: LoraConfig
    base: str            # the base run directory: absolute, or relative to the fine-tuning run directory
    quant: str = "none"  # nf4 | int8 | none: how the frozen base's adapted kernels are stored
    hf_source: str | None = None   # the Hugging Face directory the base was converted from, if any

    def base_dir(self, run_dir: Path) -> Path:
        return (Path(run_dir) / self.base).resolve()

    def to_json(self) -> str:
        d = {"lora": {"rank": self.lora.rank, "alpha": self.lora.alpha, "targets": list(self.lora.targets)},
             "base": self.base, "quant": self.quant, "hf_source": self.hf_source}
        return json.dumps(d, indent=1) + "\n"


def is_adapted(run_dir: Path) -> bool:
    return (Path(run_dir) / ADAPTER_JSON).is_file()


def read(run_dir: Path) -> Record:
    path = Path(run_dir) / ADAPTER_JSON
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        lcfg = LoraConfig(rank=int(d["lora"]["rank"]), alpha=float(d["lora"]["alpha"]),
                          targets=tuple(d["lora"]["targets"]))
        rec = Record(lcfg, str(d["base"]), str(d.get("quant", "none")), d.get("hf_source"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"{path}: not a readable adapter record ({type(e).__name__}: {e})") from None
    if rec.quant not in QUANT:
        raise AdapterError(f"{path}: quant '{rec.quant}'; allowed {', '.join(QUANT)}")
    return rec


def write(run_dir: Path, rec: Record) -> None:
    atomic.write_text(Path(run_dir) / ADAPTER_JSON, rec.to_json())


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, (*prefix, k))
        else:
            yield "/".join((*prefix, k)), v


def save_file(path: Path, adapters, cfg: LoraConfig) -> None:
    """The adapters alone as one safetensors file (float32), the LoRA config in its metadata."""
    from safetensors.numpy import save_file as save
    tensors = {k: np.ascontiguousarray(np.asarray(jax.device_get(v), np.float32)) for k, v in _flatten(adapters)}
    meta = {"rank": str(cfg.rank), "alpha": repr(float(cfg.alpha)), "targets": ",".join(cfg.targets)}
    with atomic.replacing(Path(path)) as tmp:
        save(tensors, str(tmp), metadata=meta)


def load_file(path: Path) -> tuple[dict, LoraConfig]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            flat = {k: f.get_tensor(k) for k in f.keys()}
        cfg = LoraConfig(rank=int(meta["rank"]), alpha=float(meta["alpha"]), targets=tuple(meta["targets"].split(",")))
    except (OSError, KeyError, ValueError) as e:
        raise AdapterError(f"{path}: not an adapter file ({type(e).__name__}: {e})") from None
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree, cfg
