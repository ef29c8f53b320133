"""Token streams and the resumable batch sampler the training loop draws from.

``load_splits`` turns the configured source into two 1-D int32 token streams (documents
joined by ``eos_id``), cached as ``.npy`` under the data dir. ``Sampler`` cuts a stream into
non-overlapping ``seq_len + 1`` windows and serves them in a per-epoch shuffled order that
is a pure function of ``(seed, position)``, so a resumed run continues exactly, with any number of
processes. The order comes from Grain (``data.loader=grain``, the default: ``grain_order.py``) or
from NumPy's permutation (``data.loader=numpy``); both give the same guarantees. The training loop
draws batches ahead on a thread (``prefetch.py``), which hides Grain's per-index cost.

A dataset written by ``lineage data prepare`` (``data/prepared.py``: rows of ``seq_len``
packed tokens with segment ids) is read by ``load_prepared``. Its rows, laid end to end with
one ``eos`` after the last, are a stream whose ``Sampler`` windows at ``seq_len`` are exactly
the rows (plus the next row's first token as the last target), so training reads it through
the same API. ``PackedSampler.batch_with_segments`` adds the segment ids, positions and loss
weights of each window, for training code that masks attention across packed documents.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from lineage_jax.config import ConfigError, DataConfig
from lineage_jax.data import cache as token_cache
from lineage_jax.data.grain_order import DEFAULT_ORDER, ORDERS, GrainOrder
from lineage_jax.data.prepared import read_prepared
from lineage_jax.data.sources import load_documents, resolve_data_dir, source_identity
from lineage_jax.tokenize import Tokenizer

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# Encoded into the cache key, so tokenizers with equal name and vocab but different merges differ.
_PROBE = "Hello, world! def f(x):\n    return x ** 2  # déjà vu, 日本語, 🙂\n\tThe quick brown fox."


class TokenSplits(NamedTuple):
    train: np.ndarray   # 1-D int32: train documents, each followed by eos_id
    eval: np.ndarray    # 1-D int32: eval documents, each followed by eos_id


def tokenize_documents(docs: Iterable[str], tokenizer: Tokenizer) -> np.ndarray:
    """Documents encoded and concatenated, ``tokenizer.eos_id`` after each: 1-D int32."""
    eos = np.array([tokenizer.eos_id], np.int32)
    pieces = []
    for doc in docs:
        pieces += [np.asarray(tokenizer.encode(doc), np.int32), eos]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


def cache_key(data_cfg: DataConfig, tokenizer: Tokenizer) -> dict:
    """Everything the token streams depend on: source identity, tokenizer, max_docs, eval_fraction."""
    probe = hashlib.sha256(np.asarray(tokenizer.encode(_PROBE), np.int64).tobytes()).hexdigest()[:16]
    return {"format": CACHE_FORMAT, "source": source_identity(data_cfg),
            "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                          "eos_id": tokenizer.eos_id, "probe": probe},
            "max_docs": data_cfg.max_docs, "eval_fraction": data_cfg.eval_fraction}


def cache_paths(data_cfg: DataConfig, tokenizer: Tokenizer) -> tuple[Path, Path]:
    """Where the train and eval token arrays of this config are cached (``.npy``; ``data/cache.py``)."""
    key = json.dumps(cache_key(data_cfg, tokenizer), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    base = token_cache.cache_dir(resolve_data_dir(data_cfg)) / f"{tokenizer.name}-{digest}"
    return Path(f"{base}.train.npy"), Path(f"{base}.eval.npy")


def load_splits(data_cfg: DataConfig, tokenizer: Tokenizer) -> TokenSplits:
    """Train/eval token streams of the configured source; tokenized once, then read from cache (a
    damaged cache is rebuilt, with a note).

    With ``data.prepared_dir`` set: the prepared dataset's rows as streams (``prepared_token_splits``)."""
    if getattr(data_cfg, "prepared_dir", ""):
        return prepared_token_splits(data_cfg.prepared_dir, tokenizer)
    train_path, eval_path = cache_paths(data_cfg, tokenizer)  # a missing text file fails here
    cached = [token_cache.read(p, tokenizer.vocab_size, tokenizer.eos_id) for p in (train_path, eval_path)]
    if cached[0] is not None and cached[1] is not None:
        return TokenSplits(*cached)
    docs = load_documents(data_cfg)
    splits = TokenSplits(tokenize_documents(docs.train, tokenizer), tokenize_documents(docs.eval, tokenizer))
    token_cache.save(train_path, splits.train)
    token_cache.save(eval_path, splits.eval)
    log.info("tokenized %d train / %d eval documents into %d / %d tokens (cached at %s)",
             len(docs.train), len(docs.eval), splits.train.size, splits.eval.size, train_path.parent)
    return splits


class Sampler:
    """Non-overlapping ``seq_len + 1`` token windows, visited epoch by epoch in shuffled order.

    Window ``w`` is ``tokens[w * seq_len : w * seq_len + seq_len + 1]`` (inputs and targets
    shifted by one; neighbours share one token). Epoch ``e`` visits every window once; global
    index ``i`` is position ``i % num_windows`` of epoch ``i // num_windows``. The order is
    ``grain.MapDataset.range(num_windows).shuffle(seed).repeat()`` (``order="grain"``, the default:
    ``grain_order.GrainOrder``) or ``np.random.default_rng([seed, e]).permutation(num_windows)``
    (``order="numpy"``): the same contract, different permutations.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, max_cached_epochs: int = 4, where: str = "",
                 order: str = DEFAULT_ORDER):
        self.tokens = np.asarray(tokens, np.int32).reshape(-1)
        self.seq_len, self.seed = int(seq_len), int(seed)
        if self.seq_len < 1:
            raise ValueError(f"seq_len={seq_len}: must be at least 1")
        self.num_windows = (self.tokens.size - 1) // self.seq_len
        if self.num_windows < 1:     # a user's data (``where``: which source and split), not a bug
            raise ConfigError(f"too little data{' in ' + where if where else ''}: {self.tokens.size} tokens, but one "
                              f"sequence of seq_len={self.seq_len} needs at least {self.seq_len + 1}; add text or "
                              f"lower model.context" + (" (or raise data.eval_fraction)" if "eval" in where else ""))
        self._offsets = np.arange(self.seq_len + 1)
        self._orders: OrderedDict[int, np.ndarray] = OrderedDict()
        self._max_cached = max_cached_epochs
        if order not in ORDERS:
            raise ConfigError(f"data.loader={order}: allowed {', '.join(ORDERS)}")
        self.order = order
        self._grain = GrainOrder(self.num_windows, self.seed) if order == "grain" else None
        self.rows_read = 0   # sequences served by ``batch`` so far (a multi-process run reads only its own)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The window visiting order of ``epoch``: a permutation of ``range(num_windows)`` (cached)."""
        if self._grain is not None:
            return self._grain.epoch_order(epoch)
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._orders[epoch] = order
            if len(self._orders) > self._max_cached:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(epoch)
        return order

    def window_ids(self, position: int, batch_size: int) -> np.ndarray:
        """Window numbers at global indices ``position .. position + batch_size - 1``."""
        if position < 0 or batch_size < 1:
            raise ValueError(f"position={position}, batch_size={batch_size}: need position >= 0 and batch_size >= 1")
        if self._grain is not None:
            return self._grain.window_ids(position, batch_size)
        epochs, slots = np.divmod(np.arange(position, position + batch_size, dtype=np.int64), self.num_windows)
        ids = np.empty(batch_size, np.int64)
        for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):
            here = epochs == epoch
            ids[here] = self.epoch_order(epoch)[slots[here]]
        return ids

    def batch(self, position: int, batch_size: int) -> np.ndarray:
        """Sequences at global indices ``position ..``: int32 ``[batch_size, seq_len + 1]``."""
        self.rows_read += batch_size
        return self.windows(self.window_ids(position, batch_size))

    def windows(self, ids: np.ndarray) -> np.ndarray:
        """Windows ``ids`` (any order, e.g. a mixture's): int32 ``[len(ids), seq_len + 1]``."""
        return self.tokens[np.asarray(ids, np.int64)[:, None] * self.seq_len + self._offsets]


# ----------------------------------------------------------------------------- prepared datasets

class PackedSplits(NamedTuple):
    train: dict          # tokens, segment_ids, positions, document: int32 [rows, seq_len]
    eval: dict           # the 'validation' split, same features
    meta: dict           # seq_len, tokenizer, tokenizer_name, vocab_size, eos_id


def load_prepared(prepared_dir: str | Path) -> PackedSplits:
    """The packed rows of a dataset written by ``lineage data prepare --out prepared_dir``."""
    splits, meta = read_prepared(prepared_dir)
    empty = {k: np.zeros((0, int(meta["seq_len"])), np.int32) for k in ("tokens", "segment_ids", "positions", "document")}
    return PackedSplits(splits.get("train", empty), splits.get("validation", empty), meta)


def check_prepared_tokenizer(meta: dict, tokenizer: Tokenizer, where: str = "data.prepared_dir") -> None:
    """ConfigError (one line) unless ``tokenizer`` is the one the dataset was tokenized with."""
    mine = (tokenizer.name, int(tokenizer.vocab_size), int(tokenizer.eos_id))
    theirs = (meta.get("tokenizer_name"), int(meta.get("vocab_size", -1)), int(meta.get("eos_id", -1)))
    if mine != theirs:
        raise ConfigError(f"{where}: tokenized with {theirs[0]} (vocab {theirs[1]}, eos {theirs[2]}) but "
                          f"data.tokenizer gives {mine[0]} (vocab {mine[1]}, eos {mine[2]}); "
                          f"set data.tokenizer={meta.get('tokenizer')}")


def packed_stream(rows: np.ndarray, last: int) -> np.ndarray:
    """Rows [N, L] end to end plus ``last``: 1-D int32 of N·L + 1, so ``Sampler(stream, L)``'s
    window w is row w followed by the next row's first token (``last`` after the final row)."""
    rows = np.asarray(rows, np.int32)
    return np.concatenate([rows.reshape(-1), np.array([last], np.int32)])


def prepared_token_splits(prepared_dir: str | Path, tokenizer: Tokenizer | None = None) -> TokenSplits:
    """``TokenSplits`` of a prepared dataset (for ``Sampler`` with ``seq_len`` = the rows' length)."""
    packed = load_prepared(prepared_dir)
    if tokenizer is not None:
        check_prepared_tokenizer(packed.meta, tokenizer)
    eos = int(packed.meta["eos_id"])
    return TokenSplits(packed_stream(packed.train["tokens"], eos), packed_stream(packed.eval["tokens"], eos))


class PackedSampler(Sampler):
    """``Sampler`` over packed rows: ``batch`` is ``Sampler(packed_stream(rows), L)``'s, window w
    being row w; ``batch_with_segments`` adds what packed training needs (see its docstring)."""

    def __init__(self, rows: dict, seed: int, eos_id: int, max_cached_epochs: int = 4, where: str = "",
                 order: str = DEFAULT_ORDER):
        tokens = np.asarray(rows["tokens"], np.int32)
        super().__init__(packed_stream(tokens, eos_id), tokens.shape[1], seed, max_cached_epochs, where, order)
        self.segment_ids = np.asarray(rows["segment_ids"], np.int32)
        self.positions = np.asarray(rows["positions"], np.int32)

    def batch_with_segments(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        """{``tokens`` int32 [B, L + 1] (= ``batch``: inputs ``[:, :-1]``, targets ``[:, 1:]``),
        ``segment_ids`` and ``positions`` int32 [B, L] of the inputs (0 = padding; attend within a
        segment only), ``weights`` float32 [B, L]: 1 where the target is the same segment's next
        token (``packing.packed_targets``), 0 at a document's last token, padding and row ends}."""
        self.rows_read += batch_size
        return self.windows_with_segments(self.window_ids(position, batch_size))

    def windows_with_segments(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """``batch_with_segments`` of windows ``w`` (any order, e.g. a mixture's)."""
        seg = self.segment_ids[w]
        weights = np.zeros(seg.shape, np.float32)
        weights[:, :-1] = (seg[:, :-1] != 0) & (seg[:, 1:] == seg[:, :-1])
        return {"tokens": self.windows(w), "segment_ids": seg, "positions": self.positions[w], "weights": weights}
