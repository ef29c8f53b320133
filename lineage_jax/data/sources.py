"""Where documents come from: the user's text files, a registered TFDS dataset, or the
embedded ``stdlib_docs`` corpus, picked by ``DataConfig`` in that order of precedence. A
``data.prepared_dir`` (``lineage data prepare``) comes before them all, and holds tokens:
``loader.load_prepared`` reads it.

Each source gives two lists of documents (``str``), train and eval; ``source_identity``
describes (without reading any documents) what they depend on, so the loader can key its
token cache by it.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from lineage_jax.config import ConfigError, DataConfig, MissingFileError
from lineage_jax.data.stdlib_docs import PY_CONFIG, StdlibDocs, stable_unit_hash

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "~/.cache/lineage_jax/tfds"
_GLOB_CHARS = frozenset("*?[")


class DocSplits(NamedTuple):
    train: list[str]
    eval: list[str]


def resolve_data_dir(data_cfg: DataConfig) -> Path:
    """``data.data_dir``, else ``$TFDS_DATA_DIR``, else ``~/.cache/lineage_jax/tfds``."""
    raw = data_cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
    return Path(raw).expanduser().resolve()


def source_kind(data_cfg: DataConfig) -> str:
    """Which source the config selects: ``prepared`` (``data.prepared_dir``, a dataset written by
    ``lineage data prepare``: tokens, not documents), ``text_files``, ``tfds`` or ``stdlib_docs``."""
    if getattr(data_cfg, "prepared_dir", ""):
        return "prepared"
    if data_cfg.text_files:
        return "text_files"
    return "tfds" if data_cfg.tfds_name else "stdlib_docs"


def load_documents(data_cfg: DataConfig) -> DocSplits:
    """Train and eval documents of the source ``data_cfg`` selects, ``max_docs`` applied."""
    kind = source_kind(data_cfg)
    if kind == "prepared":
        raise ValueError(f"data.prepared_dir={data_cfg.prepared_dir} holds packed tokens, not documents; "
                         "read it with lineage_jax.data.loader.load_prepared")
    if kind == "text_files":
        return text_file_documents(data_cfg)
    if kind == "tfds":
        return tfds_documents(data_cfg)
    return stdlib_documents(data_cfg)


def source_identity(data_cfg: DataConfig) -> dict[str, Any]:
    """What the documents depend on, as a JSON-able dict, without reading them.

    For text files: every path with its size and mtime (so edits invalidate caches); this
    also raises FileNotFoundError for a missing file before any work is done.
    """
    kind = source_kind(data_cfg)
    if kind == "prepared":
        info = Path(data_cfg.prepared_dir).expanduser().resolve() / "prepared_tokens" / "1.0.0" / "dataset_info.json"
        return {"kind": kind, "dir": str(info.parents[2]), "mtime": info.stat().st_mtime_ns if info.is_file() else None}
    if kind == "text_files":
        stats = [(p, p.stat()) for p in expand_text_files(data_cfg.text_files)]
        return {"kind": kind, "files": [[str(p), st.st_size, st.st_mtime_ns] for p, st in stats]}
    if kind == "tfds":
        return {"kind": kind, "name": data_cfg.tfds_name, "text_key": data_cfg.tfds_text_key}
    return {"kind": kind, "config": PY_CONFIG, "python": sys.version.split()[0],
            "version": str(StdlibDocs.VERSION), "stdlib": str(StdlibDocs.BUILDER_CONFIGS[0].description)}


# ----------------------------------------------------------------------------- text files

def expand_text_files(specs: Sequence[str]) -> list[Path]:
    """Files named by ``specs`` (paths, directories walked recursively, or glob patterns).

    Raises FileNotFoundError naming the first spec that matches nothing.
    """
    files: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if _GLOB_CHARS & set(spec):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True)) if os.path.isfile(m)]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*")
                             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            matches = [path]
        else:
            raise MissingFileError(f"data.text_files: '{spec}' does not exist")
        if not matches:
            raise MissingFileError(f"data.text_files: '{spec}' matches no files")
        files.extend(matches)
    return list(dict.fromkeys(p.resolve() for p in files))  # de-duplicated, order kept


def read_text_file(path: Path, key: str = "data.text_files") -> str:
    """A text file's contents; ConfigError (one line, naming ``key`` and the file) for a binary file
    (a NUL byte) or one that is not UTF-8 (e.g. Latin-1)."""
    raw = path.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{key}: '{path}' is a binary file (a NUL byte at byte {nul}), not text; "
                          f"give UTF-8 text files")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{key}: '{path}' is not UTF-8 text ({e.reason} at byte {e.start}); "
                          f"re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def describe_files(files: Sequence[Path], most: int = 3) -> str:
    """``'a.txt', 'b.txt' and 3 more``: the files a message names."""
    named = ", ".join(f"'{p}'" for p in files[:most])
    return named + (f" and {len(files) - most} more" if len(files) > most else "")


def describe_source(data_cfg: DataConfig) -> str:
    """The configured source in a message's words: ``data.text_files 'a.txt'``, ``data.tfds_name=x``, …"""
    kind = source_kind(data_cfg)
    if kind == "prepared":
        return f"data.prepared_dir={data_cfg.prepared_dir}"
    if kind == "text_files":
        return f"data.text_files {describe_files([Path(s) for s in data_cfg.text_files])}"
    return f"data.tfds_name={data_cfg.tfds_name}" if kind == "tfds" else "the stdlib_docs corpus"


def text_file_documents(data_cfg: DataConfig) -> DocSplits:
    """One document per file; files split train/eval by a stable hash of their relative path.

    Eval gets at least one file when there are two or more; a single file is cut at a
    character boundary instead, its last ``eval_fraction`` becoming the eval text.
    """
    files = expand_text_files(data_cfg.text_files)
    if data_cfg.max_docs:
        files = files[:data_cfg.max_docs]
    if all(p.stat().st_size == 0 for p in files):
        raise ConfigError(f"data.text_files: {describe_files(files)} "
                          f"{'is' if len(files) == 1 else 'are'} empty; give files with text to train on")
    if len(files) == 1:
        text = read_text_file(files[0])
        cut = len(text) - max(1, round(len(text) * data_cfg.eval_fraction)) if text else 0
        return DocSplits([text[:cut]], [text[cut:]])
    root = Path(os.path.commonpath(files))  # hash paths relative to it: stable if the tree moves
    unit = {p: stable_unit_hash(p.relative_to(root).as_posix()) for p in files}
    eval_files = {p for p in files if unit[p] < data_cfg.eval_fraction}
    if not eval_files:
        eval_files = {min(files, key=unit.__getitem__)}
    if len(eval_files) == len(files):
        eval_files.discard(max(files, key=unit.__getitem__))
    train = [read_text_file(p) for p in files if p not in eval_files]
    evals = [read_text_file(p) for p in files if p in eval_files]
    return DocSplits(train, evals)


# ----------------------------------------------------------------------------- TFDS datasets

def _decode(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _texts(source, key: str, limit: int, where: str) -> list[str]:
    """The ``key`` field of the first ``limit`` records (all when 0) of a data source, as str."""
    n = len(source) if not limit else min(limit, len(source))
    out = []
    for start in range(0, n, 1024):  # batched reads where the source supports them
        ids = range(start, min(start + 1024, n))
        records = source.__getitems__(list(ids)) if hasattr(source, "__getitems__") else [source[i] for i in ids]
        for record in records:
            if key not in record:
                raise ValueError(f"{where}: no feature '{key}'; set data.tfds_text_key to one of: {', '.join(record)}")
            out.append(_decode(record[key]))
    return out


def _eval_limit(data_cfg: DataConfig) -> int:
    return max(1, math.ceil(data_cfg.max_docs * data_cfg.eval_fraction)) if data_cfg.max_docs else 0


def hash_split(docs: Sequence[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """Train/eval split of ``docs`` by a stable hash of each document's index and text."""
    unit = [stable_unit_hash(f"{i}:{d[:256]}") for i, d in enumerate(docs)]
    is_eval = [u < eval_fraction for u in unit]
    if len(docs) >= 2 and not any(is_eval):
        is_eval[min(range(len(docs)), key=unit.__getitem__)] = True
    if len(docs) >= 2 and all(is_eval):
        is_eval[max(range(len(docs)), key=unit.__getitem__)] = False
    return ([d for d, e in zip(docs, is_eval) if not e], [d for d, e in zip(docs, is_eval) if e])


def tfds_documents(data_cfg: DataConfig) -> DocSplits:
    """A registered TFDS dataset's ``train`` split, and its ``validation`` or ``test`` split if
    it has one (else a hash split of train); ``max_docs`` caps train, eval proportionally."""
    name, key = data_cfg.tfds_name, data_cfg.tfds_text_key
    sources = tfds.data_source(name, split=None, data_dir=str(resolve_data_dir(data_cfg)),
                               builder_kwargs={"file_format": "array_record"})
    if "train" not in sources:
        raise ValueError(f"data.tfds_name='{name}' has no 'train' split; it has: {', '.join(sources) or 'none'}")
    eval_split = next((s for s in ("validation", "test") if s in sources), None)
    if eval_split is None:
        train, evals = hash_split(_texts(sources["train"], key, data_cfg.max_docs, name), data_cfg.eval_fraction)
    else:
        train = _texts(sources["train"], key, data_cfg.max_docs, name)
        evals = _texts(sources[eval_split], key, _eval_limit(data_cfg), name)
    return DocSplits(train, evals)


# ----------------------------------------------------------------------------- stdlib_docs

def stdlib_builder(data_cfg: DataConfig) -> StdlibDocs:
    """The ``stdlib_docs`` builder, prepared under the data dir on first use (about 2 s).

    Preparing holds a file lock, so concurrent processes (e.g. pytest-xdist workers) prepare once.
    """
    data_dir = resolve_data_dir(data_cfg)
    make = lambda: StdlibDocs(config=PY_CONFIG, data_dir=str(data_dir), file_format="array_record")  # noqa: E731
    with _quiet_tfds():
        builder = make()
        if not builder.is_prepared():
            with _file_lock(data_dir / ".stdlib_docs.lock"):
                builder = make()  # another process may have prepared it while we waited
                if not builder.is_prepared():
                    log.info("preparing the stdlib_docs corpus (Python %s stdlib docstrings) in %s",
                             sys.version.split()[0], builder.data_dir)
                    builder.download_and_prepare()
    return builder


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock on ``path`` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_tfds():
    """Hide TFDS's progress bars, banner lines and absl info/warnings while preparing."""
    was_shown = getattr(tqdm_utils, "_active", True)
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    tfds.display_progress_bar(False)
    absl_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_log.setLevel(level)
        tfds.display_progress_bar(was_shown)


def stdlib_documents(data_cfg: DataConfig) -> DocSplits:
    """The embedded corpus: ``stdlib_docs`` train and validation splits, ``max_docs`` applied."""
    builder = stdlib_builder(data_cfg)
    train = _texts(builder.as_data_source("train"), "text", data_cfg.max_docs, "stdlib_docs")
    evals = _texts(builder.as_data_source("validation"), "text", _eval_limit(data_cfg), "stdlib_docs")
    return DocSplits(train, evals)
