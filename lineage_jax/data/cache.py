"""The token caches ``load_splits`` keeps under ``<data dir>/lineage_jax_tokens``: written all or
nothing, checked when read (a damaged one is deleted and rebuilt, with a note), listed and pruned.

A cache is a pair of ``.npy`` files, ``NAME-DIGEST.train.npy`` and ``NAME-DIGEST.eval.npy`` (NAME:
the tokenizer, DIGEST: everything the streams depend on, ``loader.cache_key``). Reading one bumps
its modification time, so ``prune`` can drop the least recently used first (``lineage cache``).
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DIR_NAME = "lineage_jax_tokens"
SUFFIXES = (".train.npy", ".eval.npy")


def cache_dir(data_dir: str | Path) -> Path:
    """Where the token caches of ``data_dir`` (``sources.resolve_data_dir``) live."""
    return Path(data_dir).expanduser() / DIR_NAME


def save(path: Path, array: np.ndarray) -> None:
    """np.save via a temporary file + rename, so a crash never leaves a truncated cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _damage(path: Path, vocab_size: int, eos_id: int) -> tuple[np.ndarray | None, str]:
    """(the stream, "") if ``path`` holds a token stream of this tokenizer, else (None, what is wrong)."""
    try:
        tokens = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:          # truncated, garbled header, not an .npy at all
        return None, " ".join(str(e).split())[:120] or type(e).__name__
    if tokens.dtype != np.int32 or tokens.ndim != 1:
        return None, f"dtype {tokens.dtype}, shape {tokens.shape} (expected 1-D int32)"
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        return None, f"ids outside the vocabulary [0, {vocab_size})"
    if tokens.size and tokens[-1] != eos_id:
        return None, f"does not end with eos ({eos_id})"
    return tokens, ""


def read(path: Path, vocab_size: int, eos_id: int) -> np.ndarray | None:
    """The cached stream at ``path``, or None when there is none; a damaged one (truncated, garbled,
    ids outside the vocabulary) is deleted with a note and None returned, so the caller rebuilds it."""
    if not path.is_file():
        return None
    tokens, why = _damage(path, vocab_size, eos_id)
    if tokens is None:
        log.warning("token cache %s is damaged (%s); deleted, rebuilding it", path, why)
        path.unlink(missing_ok=True)
        return None
    try:
        os.utime(path)                                    # last used: what prune keeps longest
    except OSError:                                       # a read-only cache is still a cache
        pass
    return tokens


def entries(data_dir: str | Path) -> list[dict]:
    """Every cache in ``data_dir``, most recently used first: {name, files, bytes, last_used (epoch s)}.
    Leftover temporary files (a killed write) are listed under the name ``(temporary files)``."""
    root = cache_dir(data_dir)
    groups: dict[str, list[Path]] = {}
    for f in sorted(root.glob("*")) if root.is_dir() else []:
        if not f.is_file():
            continue
        stem = next((f.name[:-len(s)] for s in SUFFIXES if f.name.endswith(s)), "(temporary files)")
        groups.setdefault(stem, []).append(f)
    out = [{"name": stem, "files": [str(f) for f in files], "bytes": sum(f.stat().st_size for f in files),
            "last_used": max(f.stat().st_mtime for f in files)} for stem, files in groups.items()]
    return sorted(out, key=lambda e: -e["last_used"])


def prune(data_dir: str | Path, max_bytes: int = 0) -> list[dict]:
    """Delete caches, least recently used first, until at most ``max_bytes`` remain (0: delete all);
    temporary leftovers always go. Returns the deleted entries."""
    kept, removed = 0, []
    for e in entries(data_dir):
        if e["name"] != "(temporary files)" and kept + e["bytes"] <= max_bytes:
            kept += e["bytes"]
            continue
        files = [f for f in e["files"] if not _being_written(Path(f))]
        size = sum(Path(f).stat().st_size for f in files if Path(f).exists())
        for f in files:
            Path(f).unlink(missing_ok=True)
        if files:
            removed.append({**e, "files": files, "bytes": size})
    return removed


def _being_written(path: Path) -> bool:
    """A ``*.<pid>.<id>.tmp`` file whose writer (the pid in its name) is still alive: a run tokenizing now."""
    parts = path.name.split(".")
    if not path.name.endswith(".tmp") or len(parts) < 4 or not parts[-3].isdigit():
        return False
    try:
        os.kill(int(parts[-3]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def age(seconds_since_epoch: float) -> str:
    """``3 h``-style age of a timestamp, for listings."""
    s = max(0.0, time.time() - seconds_since_epoch)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit}"
    return f"{s:.0f} s"
