"""``prepared_tokens``: a TFDS dataset of packed token rows, written by ``lineage data prepare``
(``lineage_jax/data/pipeline/prepare.py``) and read by training.

Each example is one packed row of ``seq_len`` tokens (packing as in T5, Raffel et al. 2020;
``pipeline/packing.py``) with four int32 features of that length:

- ``tokens``: documents' tokens, each document followed by the tokenizer's ``eos_id``;
  padding is ``eos_id`` too;
- ``segment_ids``: 1, 2, … per document piece within the row, 0 in padding;
- ``positions``: 0, 1, … restarting at each piece, 0 in padding;
- ``document``: the index of the kept document within its split, −1 in padding.

A document longer than a row is cut into ``seq_len``-long pieces and a shorter last one;
a full piece fills a row of its own, so a document reads back as its full pieces in row
order followed by its last piece (``document_tokens``). The splits are ``train`` and
``validation``; ``seq_len`` and the tokenizer (spec, name, vocabulary size, eos id) are in
the dataset's metadata. Written as ``array_record``; no TensorFlow is needed to write or read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from lineage_jax.config.errors import ConfigError, MissingFileError

FEATURES = ("tokens", "segment_ids", "positions", "document")
META_KEYS = ("seq_len", "tokenizer", "tokenizer_name", "vocab_size", "eos_id")   # what prepare writes
NAME = "prepared_tokens"


class PreparedTokens(tfds.core.GeneratorBasedBuilder):
    """Packed token rows with segment ids; see the module docstring. Built by ``prepare``, which
    hands over the arrays (``splits``) and the metadata; read with ``tfds.data_source``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "tokens, segment_ids, positions, document per packed row; seq_len in metadata."}

    def __init__(self, *, splits: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                 metadata: Mapping | None = None, **kwargs):
        self._splits = splits
        self._metadata = dict(metadata or {})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        row = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)  # noqa: E731
        return tfds.core.DatasetInfo(
            builder=self,
            description=("Documents after deduplication, quality and language filtering, tokenized and packed "
                         "into fixed-length rows with document separators and segment ids."),
            features=tfds.features.FeaturesDict({k: row() for k in FEATURES}),
            metadata=tfds.core.MetadataDict(**self._metadata),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        if self._splits is None:
            raise ValueError(f"{NAME} is written by `lineage data prepare` (prepare()); read it with tfds.data_source")
        return {name: self._generate_examples(arrays) for name, arrays in self._splits.items()}

    def _generate_examples(self, arrays: Mapping[str, np.ndarray]) -> Iterator[tuple[int, dict]]:
        for i in range(len(arrays["tokens"])):
            yield i, {k: np.asarray(arrays[k][i], np.int32) for k in FEATURES}


def dataset_dir(out_dir: str | Path) -> Path:
    """Where ``prepare`` writes the dataset under ``out_dir`` (``prepared_tokens/1.0.0``)."""
    return Path(out_dir).expanduser() / NAME / str(PreparedTokens.VERSION)


def read_prepared(out_dir: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """({split: {feature: int32 [rows, seq_len]}}, metadata) of a prepared dataset.

    Raises MissingFileError (one line) when ``out_dir`` holds no prepared dataset, and ConfigError
    (one line, naming the directory and how to rebuild it) when it holds a damaged one: unreadable
    dataset_info/features/metadata JSON, metadata without its keys, a truncated or corrupt array_record."""
    path = dataset_dir(out_dir)
    if not (path / "dataset_info.json").is_file():
        raise MissingFileError(f"{out_dir}: no prepared dataset here (expected {NAME}/{PreparedTokens.VERSION}/; "
                                f"make one with `lineage data prepare --out {out_dir}`)")
    try:   # the reads below see only files on disk: anything they raise is a damaged dataset, not a bug here
        builder = tfds.builder_from_directory(str(path))
        meta = dict(builder.info.metadata or {})
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"metadata.json lacks {', '.join(missing)}")
        seq_len = int(meta["seq_len"])
        out = {}
        for split in builder.info.splits:
            source = builder.as_data_source(split)
            records = source.__getitems__(list(range(len(source)))) if len(source) else []
            out[split] = {k: (np.stack([r[k] for r in records]).astype(np.int32) if records
                              else np.zeros((0, seq_len), np.int32)) for k in FEATURES}
            if out[split]["tokens"].shape[1:] != (seq_len,):
                raise ValueError(f"{split} rows have shape {out[split]['tokens'].shape[1:]}, not ({seq_len},)")
    except Exception as e:  # noqa: BLE001 - JSON, protobuf, array_record (Riegeli) and shape errors alike
        detail = " ".join(str(e).split())[:160]
        raise ConfigError(f"{out_dir}: the prepared dataset is damaged ({type(e).__name__}: {detail}); rebuild it "
                          f"with `lineage data prepare --out {out_dir} --overwrite`") from e
    return out, meta


def document_tokens(rows: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
    """{document index: its tokens (eos included)} from a split's packed rows: full pieces in row
    order, then the shorter last piece."""
    pieces: dict[int, list[tuple[bool, int, np.ndarray]]] = {}
    seq_len = rows["tokens"].shape[1] if rows["tokens"].ndim == 2 else 0
    for r in range(rows["tokens"].shape[0]):
        seg = rows["segment_ids"][r]
        for s in np.unique(seg[seg > 0]):
            here = seg == s
            doc = int(rows["document"][r][here][0])
            piece = rows["tokens"][r][here]
            pieces.setdefault(doc, []).append((piece.size < seq_len, r, piece))
    return {d: np.concatenate([p for _, _, p in sorted(ps, key=lambda t: (t[0], t[1]))]) for d, ps in pieces.items()}


__all__ = ["PreparedTokens", "read_prepared", "dataset_dir", "document_tokens", "FEATURES", "NAME"]
