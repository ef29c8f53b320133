"""``prepare``: the data pipeline's stages composed, from raw documents to a TFDS dataset of
packed token rows (``lineage_jax/data/prepared.py``) that training reads.

    read → exact dedup → near dedup → quality → language → split → tokenize → pack → write

- read: text files (one document per file) or JSONL (one document per line, its
  ``text_key`` field); directories are walked, globs expanded;
- exact dedup: normalised BLAKE2b hash (``dedup.exact_dedup``), first occurrence kept;
- near dedup: MinHash + LSH at ``near_dup_threshold`` Jaccard (``dedup.near_dedup``;
  Broder 1997), verified by the exact shingle Jaccard;
- quality: Gopher/C4 heuristics (``quality.quality_reasons``; Rae et al. 2021, Raffel et
  al. 2020). Gopher's stop-word rule is English; with ``stop_words_by_language`` it uses the
  stop words of each document's identified language, and it is skipped for ``other``
  (those are the language stage's to remove), so a German document is not dropped as junk;
- language: the shipped n-gram naive Bayes (``langid``), keeping ``languages``;
- split: ``eval_fraction`` of the documents (stable hash of index and text) → ``validation``;
- tokenize: ``byte`` (default) or a trained tokenizer path. The fast path: byte-level BPE
  through the ``tokenizers`` library (Rust, batched, ``encode_batch_fast`` where the library
  has it: no character offsets), bytes through ``str.encode`` — the
  same ids as the teaching ``encode`` (``tests/data/test_prepare.py``);
- pack: rows of ``seq_len`` tokens, ``eos`` after each document, segment ids and positions
  (``packing.pack``, first fit).

Returns a JSON-able report: ``input_docs``, ``output_docs``, ``removed`` {``exact_dup``,
``near_dup``, ``quality``, ``language``}, ``tokens`` (document tokens with separators, no
padding), per-stage counts (``stages``), quality reasons and languages tallied, and every
removed document with its reason (``removed_docs``). Also written to ``out_dir/report.json``,
with the kept documents' sources in ``out_dir/documents.jsonl``. The dataset and both files are
built in a temporary directory inside ``out_dir`` and swapped in only once complete (``staging``),
so ``--overwrite`` never leaves ``out_dir`` without a whole dataset, old or new.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from lineage_jax.config import ConfigError, MissingFileError
from lineage_jax.data.pipeline import langid
from lineage_jax.data.pipeline.dedup import exact_dedup, near_dedup
from lineage_jax.data.pipeline.packing import pack
from lineage_jax.data.pipeline.quality import QualityConfig, clean_document, quality_reasons
from lineage_jax.data.prepared import NAME, PreparedTokens, dataset_dir
from lineage_jax.data.sources import _quiet_tfds, expand_text_files, read_text_file
from lineage_jax.data.stdlib_docs import stable_unit_hash
from lineage_jax.tokenize import get_tokenizer
from lineage_jax.tokenize.byte import ByteTokenizer
from lineage_jax.tokenize.bytelevel import ByteLevelBPETokenizer

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    seq_len: int = 128                      # tokens per packed row (= the model's context)
    tokenizer: str = "byte"                 # 'byte' or a path to a trained tokenizer
    languages: tuple[str, ...] = ("en",)
    near_dup_threshold: float = 0.8         # Jaccard of word 5-gram shingles
    num_perm: int = 128
    shingle_ngram: int = 5
    quality: QualityConfig = QualityConfig()
    stop_words_by_language: bool = True
    eval_fraction: float = 0.05
    strategy: str = "first_fit"
    fast: bool = True                       # tokenize through the tokenizers library when possible
    text_key: str = "text"                  # the JSONL field holding a document
    overwrite: bool = False                 # replace a dataset already in out_dir

    def validate(self) -> "PrepareConfig":
        if self.seq_len < 2:
            raise ConfigError(f"seq_len={self.seq_len}: must be at least 2")
        if not 0.0 < self.near_dup_threshold < 1.0:
            raise ConfigError(f"near_dup_threshold={self.near_dup_threshold}: must lie in (0, 1)")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction={self.eval_fraction}: must lie in [0, 1)")
        if self.num_perm < 1 or self.shingle_ngram < 1:
            raise ConfigError(f"num_perm={self.num_perm}, shingle_ngram={self.shingle_ngram}: must be at least 1")
        if self.strategy not in ("first_fit", "sequential"):
            raise ConfigError(f"strategy={self.strategy!r}: allowed first_fit, sequential")
        try:
            langid.parse_languages(self.languages)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self


# ----------------------------------------------------------------------------- read

def read_documents(inputs: Sequence[str], text_key: str = "text") -> tuple[list[str], list[str]]:
    """(documents, their sources): a file is one document, a ``.jsonl`` line is one (``path:line``)."""
    try:
        files = expand_text_files(list(inputs))
    except MissingFileError as e:
        raise MissingFileError(str(e).replace("data.text_files", "--inputs")) from None
    docs, srcs = [], []
    for path in files:
        text = read_text_file(path, "--inputs")
        if path.suffix != ".jsonl":
            docs.append(text)
            srcs.append(str(path))
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"--inputs: '{path}' line {n} is not JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
                raise ConfigError(f"--inputs: '{path}' line {n} has no string field '{text_key}'")
            docs.append(record[text_key])
            srcs.append(f"{path}:{n}")
    return docs, srcs


# ----------------------------------------------------------------------------- tokenize

def encode_documents(docs: Sequence[str], tokenizer, fast: bool = True) -> tuple[list[np.ndarray], str]:
    """Each document's ids (no eos), and which path encoded them: ``tokenizers`` (Rust) for a
    byte-level BPE, ``bytes`` for the byte tokenizer, else ``teaching`` (``tokenizer.encode``).
    Documents with lone surrogates (which ``tokenizers`` refuses) go through ``encode``."""
    if fast and isinstance(tokenizer, ByteTokenizer):
        return [np.frombuffer(d.encode("utf-8", errors="surrogatepass"), np.uint8).astype(np.int32)
                for d in docs], "bytes"
    if fast and isinstance(tokenizer, ByteLevelBPETokenizer) and importlib.util.find_spec("tokenizers"):
        plain = [i for i, d in enumerate(docs) if not _SURROGATE.search(d)]
        out: list = [None] * len(docs)
        rust = tokenizer.fast()                             # encode_batch_fast: no offsets computed
        batch = getattr(rust, "encode_batch_fast", rust.encode_batch)
        for i, enc in zip(plain, batch([docs[i] for i in plain], add_special_tokens=False)):
            out[i] = np.asarray(enc.ids, np.int32)
        for i, d in enumerate(docs):
            if out[i] is None:
                out[i] = np.asarray(tokenizer.encode(d), np.int32)
        return out, "tokenizers"
    return [np.asarray(tokenizer.encode(d), np.int32) for d in docs], "teaching"


def split_indices(docs: Sequence[str], eval_fraction: float) -> tuple[list[int], list[int]]:
    """(train, validation) indices by a stable hash of index and text; validation gets one
    document when there are at least two and the fraction is positive, train keeps one."""
    if eval_fraction <= 0 or len(docs) < 2:
        return list(range(len(docs))), []
    unit = [stable_unit_hash(f"{i}:{d[:256]}") for i, d in enumerate(docs)]
    is_eval = [u < eval_fraction for u in unit]
    if not any(is_eval):
        is_eval[min(range(len(docs)), key=unit.__getitem__)] = True
    if all(is_eval):
        is_eval[max(range(len(docs)), key=unit.__getitem__)] = False
    return [i for i, e in enumerate(is_eval) if not e], [i for i, e in enumerate(is_eval) if e]


# ----------------------------------------------------------------------------- the pipeline

def _bar(progress: bool, **kw):
    from tqdm import tqdm
    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


def _quality_cfg(cfg: PrepareConfig, label: str) -> QualityConfig:
    if not cfg.stop_words_by_language:
        return cfg.quality
    if label in langid.STOP_WORDS:
        return dataclasses.replace(cfg.quality, stop_words=langid.STOP_WORDS[label])
    return dataclasses.replace(cfg.quality, min_stop_words=0)       # 'other': the language stage decides


def prepare(inputs: Sequence[str], out_dir: str, cfg: PrepareConfig = PrepareConfig(), *,
            progress: bool = False) -> dict:
    """Run every stage (module docstring) and write the dataset into ``out_dir``; the report."""
    cfg = cfg.validate()
    languages = langid.parse_languages(cfg.languages)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; give a directory (it holds the dataset and report.json)")
    recover(out)                               # a killed --overwrite's old dataset back first, then the check
    if dataset_dir(out).exists() and not cfg.overwrite:
        raise ConfigError(f"--out {out_dir}: already holds a prepared dataset; pass --overwrite or pick a new directory")
    try:
        tokenizer = get_tokenizer(cfg.tokenizer)
    except ValueError as e:
        raise ConfigError(str(e).replace("data.tokenizer", "--tokenizer")) from None

    stages = Counter()
    docs, srcs = read_documents(inputs, cfg.text_key)
    n_in = len(docs)
    removed_docs: list[dict] = []
    alive = list(range(n_in))
    stage_rows = [{"stage": "read", "docs_in": n_in, "removed": 0, "docs_out": n_in}]

    def record(stage: str, kept_local: list[int], details: dict[int, dict]) -> None:
        nonlocal alive
        for j, info in sorted(details.items()):
            removed_docs.append({"source": srcs[alive[j]], "stage": stage, **info})
        stages[stage] += len(details)
        stage_rows.append({"stage": stage, "docs_in": len(alive), "removed": len(details), "docs_out": len(kept_local)})
        alive = [alive[j] for j in kept_local]

    with _bar(progress, total=6, desc="prepare", unit="stage") as bar:
        bar.set_postfix_str("exact dedup")
        kept, rem = exact_dedup([docs[i] for i in alive])
        record("exact_dup", kept, {j: {"reason": "exact duplicate", "duplicate_of": srcs[alive[f]]} for j, f in rem})
        bar.update()

        bar.set_postfix_str("near dedup")
        kept, rem = near_dedup([docs[i] for i in alive], cfg.near_dup_threshold, cfg.num_perm, cfg.shingle_ngram)
        record("near_dup", kept, {j: {"reason": f"jaccard {jac:.3f} >= {cfg.near_dup_threshold}",
                                      "duplicate_of": srcs[alive[f]], "jaccard": jac} for j, f, jac in rem})
        bar.update()

        bar.set_postfix_str("language id")
        ident = langid.default_identifier()
        labels = [ident.predict(docs[i]) for i in _bar(progress, iterable=alive, desc="language id", unit="doc")]
        bar.set_postfix_str("quality")
        kept, rem, reasons_tally = [], {}, Counter()
        for j, i in enumerate(_bar(progress, iterable=alive, desc="quality", unit="doc")):
            qcfg = _quality_cfg(cfg, labels[j])
            reasons = quality_reasons(docs[i], qcfg)
            if reasons:
                rem[j] = {"reason": ",".join(reasons), "reasons": reasons}
                reasons_tally.update(reasons)
            else:
                kept.append(j)
                docs[i] = clean_document(docs[i], qcfg)     # C4 drops lines, not documents
        labels = [labels[j] for j in kept]
        record("quality", kept, rem)
        bar.update()

        kept, rem = langid.keep_languages([docs[i] for i in alive], languages, labels=labels)
        language_tally = Counter(labels)
        record("language", kept, {j: {"reason": f"language {lab} not in {','.join(languages)}", "language": lab}
                                  for j, lab in rem.items()})
        bar.update()
        if not alive:
            raise ConfigError(f"no document is left of {n_in}: removed " + ", ".join(
                f"{k} {stages[k]}" for k in ("exact_dup", "near_dup", "quality", "language"))
                + "; loosen the filters (e.g. --languages, --near-dup-threshold)")

        bar.set_postfix_str("tokenize")
        kept_docs = [docs[i] for i in alive]
        ids, path = encode_documents(kept_docs, tokenizer, cfg.fast)
        bar.update()

        bar.set_postfix_str("pack + write")
        train_idx, val_idx = split_indices(kept_docs, cfg.eval_fraction)
        eos = tokenizer.eos_id
        splits, split_report = {}, {}
        for name, idx in (("train", train_idx), ("validation", val_idx)):
            packed = pack([ids[i] for i in idx], cfg.seq_len, eos, eos_id=eos, strategy=cfg.strategy)
            splits[name] = {k: packed[k] for k in ("tokens", "segment_ids", "positions", "document")}
            n_tok = int((packed["segment_ids"] > 0).sum())
            split_report[name] = {"docs": len(idx), "rows": int(packed["tokens"].shape[0]), "tokens": n_tok,
                                  "padding": int(packed["tokens"].size - n_tok)}
        meta = {"seq_len": cfg.seq_len, "tokenizer": cfg.tokenizer, "tokenizer_name": tokenizer.name,
                "vocab_size": int(tokenizer.vocab_size), "eos_id": int(eos)}
        tokens = sum(s["tokens"] for s in split_report.values())
        stage_rows.append({"stage": "tokenize", "docs_in": len(alive), "tokens": tokens, "path": path})
        report = {"input_docs": n_in, "output_docs": len(alive),
                  "removed": {k: stages[k] for k in ("exact_dup", "near_dup", "quality", "language")},
                  "tokens": tokens, "stages": stage_rows, "quality_reasons": dict(sorted(reasons_tally.items())),
                  "languages": dict(sorted(language_tally.items())), "splits": split_report,
                  "tokenizer": {**{k: meta[k] for k in ("tokenizer", "tokenizer_name", "vocab_size", "eos_id")},
                                "encode_path": path},
                  "seq_len": cfg.seq_len, "out_dir": str(out), "dataset_dir": str(dataset_dir(out)),
                  "removed_docs": removed_docs}
        sources = [{"split": name, "document": d, "source": srcs[alive[i]]}
                   for name, idx in (("train", train_idx), ("validation", val_idx)) for d, i in enumerate(idx)]
        with staging(out) as tmp:                            # built beside the old dataset, swapped in when whole
            nonempty = {k: v for k, v in splits.items() if len(v["tokens"])}   # TFDS refuses an empty split (one
            _write(tmp, PreparedTokens, nonempty, meta)                         # document: no validation split)
            (tmp / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            (tmp / "documents.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sources),
                                                 encoding="utf-8")
        bar.update()
    return report


OUTPUTS = (NAME, "report.json", "documents.jsonl")    # what prepare puts in --out; swapped in together


@contextlib.contextmanager
def staging(out: Path):
    """A fresh directory beside ``out``'s dataset to build the new one in; when the block ends without
    an error, its ``OUTPUTS`` replace ``out``'s (old ones renamed away, new ones renamed in, then the
    old deleted), so a failure or a kill mid-prepare leaves the old dataset whole and loadable."""
    out.mkdir(parents=True, exist_ok=True)
    recover(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".prepare-new-{os.getpid()}-", dir=out))
    try:
        yield tmp
        old = Path(tempfile.mkdtemp(prefix=".prepare-old-", dir=out))
        for name in OUTPUTS:
            if (out / name).exists():
                os.replace(out / name, old / name)
        for name in OUTPUTS:
            os.replace(tmp / name, out / name)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover(out: Path) -> None:
    """Undo what a killed prepare left in ``out``: an old dataset moved away but not yet replaced comes back;
    a half-built new one goes, unless the prepare building it (the pid in its name) is still running."""
    if not out.is_dir():
        return
    for stale in out.glob(".prepare-*"):
        if stale.name.startswith(".prepare-old-"):
            for name in OUTPUTS:
                if (stale / name).exists() and not (out / name).exists():
                    os.replace(stale / name, out / name)
        elif _alive(stale.name.split("-")[2]):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(out: Path, builder_cls, splits: dict, meta: dict) -> None:
    """Write the TFDS dataset quietly (no TFDS banner on stdout: ``--json`` prints there)."""
    with _quiet_tfds():
        builder = builder_cls(splits=splits, metadata=meta, data_dir=str(out), file_format="array_record")
        builder.download_and_prepare()
    shutil.rmtree(out / "downloads", ignore_errors=True)     # TFDS makes an empty downloads/ folder


__all__ = ["PrepareConfig", "prepare", "read_documents", "encode_documents", "split_indices"]
