"""A CLIP run directory: ``clip.json`` (the model and training settings), ``vocab.json`` (the word
vocabulary, by content), ``metrics.jsonl``, ``checkpoints/`` (Orbax, verified on restore), the lock.

``check`` refuses, in one line, a directory holding other files or another CLIP model (unless
``overwrite``, which clears only these files); ``load`` reads a trained run's parameters alone (no
optimiser state) for zero-shot classification and scoring.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax

from lineage_jax.clip.model import CLIPConfig, init_params
from lineage_jax.clip.text import WordVocab
from lineage_jax.runs import checkpoint
from lineage_jax.runs.atomic import write_text
from lineage_jax.runs.lock import LOCK_NAME
from lineage_jax.runs.rundir import RunDirError

CONFIG, VOCAB, METRICS = "clip.json", "vocab.json", "metrics.jsonl"
OWN = (CONFIG, VOCAB, METRICS, LOCK_NAME, "checkpoints", "checkpoints-corrupt")


def _own(name: str) -> bool:
    return name in OWN or any(name.startswith(f".{f}.") for f in OWN)


def check(run_dir: Path, model: dict, vocab: WordVocab, *, overwrite: bool) -> None:
    """Before writing: the directory is new, or this run's (same model, same vocabulary); else one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir}: is a file, not a directory; give a directory path")
    if not run_dir.is_dir():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if not _own(p.name))
    if foreign:
        raise RunDirError(f"run_dir {run_dir}: holds files that are not a CLIP run's ({', '.join(foreign[:3])}); "
                          f"give an empty or new directory")
    if overwrite:
        for name in OWN:
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return
    if (run_dir / CONFIG).is_file():
        old = json.loads((run_dir / CONFIG).read_text())
        if old.get("model") != model:
            changed = sorted(k for k in set(model) | set(old.get("model", {}))
                             if model.get(k) != old.get("model", {}).get(k))
            raise RunDirError(f"run_dir {run_dir}: holds another CLIP model (differs in {', '.join(changed)}); "
                              f"use another directory or --overwrite")
    if (run_dir / VOCAB).is_file() and WordVocab.from_json((run_dir / VOCAB).read_text()).fingerprint() != vocab.fingerprint():
        raise RunDirError(f"run_dir {run_dir}: was trained with another vocabulary; use another directory or --overwrite")


def write_config(run_dir: Path, model: CLIPConfig, train: dict, vocab: WordVocab) -> None:
    write_text(run_dir / CONFIG, json.dumps({"model": model.to_dict(), "train": train}, indent=1))
    write_text(run_dir / VOCAB, vocab.to_json())


def read_config(run_dir: str | Path) -> tuple[CLIPConfig, dict, WordVocab]:
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file() or not (run_dir / VOCAB).is_file():
        raise RunDirError(f"--run-dir={run_dir}: not a CLIP run (no {CONFIG} / {VOCAB}); train one with "
                          f"`lineage clip train --run-dir {run_dir}`")
    rec = json.loads((run_dir / CONFIG).read_text())
    return CLIPConfig(**rec["model"]), rec["train"], WordVocab.from_json((run_dir / VOCAB).read_text())


def load(run_dir: str | Path) -> tuple[CLIPConfig, object, WordVocab, int]:
    """(config, params on one device, vocabulary, step) of the newest good checkpoint."""
    cfg, _, vocab = read_config(run_dir)
    if checkpoint.latest_step(run_dir) is None:
        raise RunDirError(f"--run-dir={run_dir}: has no checkpoint yet; run `lineage clip train --run-dir {run_dir}`")
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
                            nn.unbox(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))))
    with checkpoint.manager(run_dir, create=False, async_save=False) as mngr:
        step, params, _ = checkpoint.restore_latest_good(mngr, abstract, params_only=True)
    return cfg, params, vocab, step
