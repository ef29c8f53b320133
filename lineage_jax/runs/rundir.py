"""What a run directory holds, and the checks before a run writes into one (issue 15, cause 4).

A run directory holds only its run's own files (``OWN``): ``config.yaml``, ``run.json`` (the
tokenizer the run was trained with, by content), ``metrics.jsonl``, ``loss.png``, ``checkpoints/``,
``checkpoints-corrupt/``, the lock ``run.lock`` and the temporary files of atomic writes. Before a
run writes anything, ``check`` refuses, in one line, a directory that

* holds other files (a user's own),
* has a ``config.yaml`` that is not a run's, or another model's (with or without a checkpoint),
* was trained with another tokenizer (``run.json``'s SHA-256 differs from the tokenizer's now),
* has metrics but no ``checkpoints/`` (deleted): starting over would drop the old metrics,

unless ``--overwrite``, which clears the run's own files (and only those) to start afresh.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from lineage_jax.config.errors import UserError
from lineage_jax.runs.lock import LOCK_NAME, is_lock_name

RUN_JSON = "run.json"
OWN_FILES = ("config.yaml", RUN_JSON, "metrics.jsonl", "loss.png", LOCK_NAME, "adapter.json",
             "mixture.json", "mixture.png")   # mixture.*: what a data.mixture run served
OWN_DIRS = ("checkpoints", "checkpoints-corrupt", "base")   # adapter.json, base/: a fine-tuning run (adapt.store)
# model settings that may change between invocations of one run (how it computes, not what it is)
FREE_MODEL_KEYS = ("scan_layers", "remat", "attn_chunks", "dtype")


class RunDirError(UserError, ValueError):
    """The run directory holds something this run cannot continue or must not overwrite."""


def is_own(name: str) -> bool:
    """Whether a run wrote ``name`` (its files, dirs, or an atomic write's ``.<file>.*`` temporary)."""
    return (name in OWN_FILES or name in OWN_DIRS or is_lock_name(name)     # run.<i>.lock: process i's
            or any(name.startswith(f".{f}.") for f in OWN_FILES))


def create(run_dir: Path) -> bool:
    """Make ``run_dir`` (and its parents); True if it was not there. One line naming ``run_dir`` and the
    OS's reason when it is a file or cannot be made (``/proc/x``, a read-only place)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir {run_dir}: is a file, not a directory; give a directory path")
    existed = run_dir.is_dir()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"run_dir {run_dir}: cannot create it ({e.strerror or e})") from None
    return not existed


def read_record(run_dir: Path) -> dict:
    """``run.json`` as a dict ({} when absent or unreadable)."""
    try:
        rec = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def tokenizer_problem(recorded: dict | None, spec: str, sha256: str) -> str | None:
    """Why the tokenizer now (``spec``, content ``sha256``) is not the one recorded, or None."""
    if not recorded or not recorded.get("sha256") or recorded["sha256"] == sha256:
        return None
    return (f"was trained with another tokenizer (data.tokenizer={recorded.get('spec', '?')}, sha256 "
            f"{recorded['sha256'][:12]}…); data.tokenizer={spec} now has sha256 {sha256[:12]}…, so the same "
            f"ids would mean other text")


def _model_problem(run_dir: Path, model: dict) -> str | None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        old = None
    if not isinstance(old, dict) or not isinstance(old.get("model"), dict):
        return "has a config.yaml that is not a lineage run's"
    old = old["model"]
    diff = [k for k in model if k in old and old[k] != model[k] and k not in FREE_MODEL_KEYS]
    if diff:
        k = diff[0]
        return f"holds a run of another model (model.{k}: {old[k]} there, {model[k]} here)"
    return None


def _metrics_problem(run_dir: Path) -> str | None:
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size and not (run_dir / "checkpoints").is_dir():
        return ("has metrics.jsonl but no checkpoints/ to resume from (starting over would drop those metrics); "
                "put checkpoints/ back")
    return None


def check(run_dir: Path, model: dict, tokenizer_spec: str, tokenizer_sha256: str, *, overwrite: bool) -> None:
    """Refuse (one ``RunDirError`` line) a ``run_dir`` this run must not write into; with ``overwrite``
    clear the run's own files instead. Call with the lock held (``runs.lock.hold``)."""
    foreign = sorted(p.name for p in run_dir.iterdir() if not is_own(p.name))
    fix = "use a new run_dir, or --overwrite to start afresh there (it clears only the run's own files)"
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise RunDirError(f"run_dir {run_dir} holds files that are not a run's own ({shown}); {fix}")
    problem = (_model_problem(run_dir, model)
               or tokenizer_problem(read_record(run_dir).get("tokenizer"), tokenizer_spec, tokenizer_sha256)
               or _metrics_problem(run_dir))
    if problem and not overwrite:
        raise RunDirError(f"run_dir {run_dir} {problem}; {fix}")
    if overwrite:
        clear(run_dir)


def clear(run_dir: Path) -> None:
    """Remove the run's own files (the locks excepted: they are held); anything else stays."""
    own = [p for p in run_dir.iterdir() if is_own(p.name) and not is_lock_name(p.name)]
    # files first, checkpoints last: a kill midway leaves checkpoints without metrics (resumable),
    # never metrics without checkpoints (refused until --overwrite)
    for p in sorted(own, key=lambda p: p.is_dir() and not p.is_symlink()):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
