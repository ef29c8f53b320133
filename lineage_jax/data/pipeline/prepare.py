"""``prepare``: the data pipeline's stages composed, from raw documents to a TFDS dataset of
packed token rows (``lineage_jax/data/prepared.py``) that training reads.

    read → exact dedup → near dedup → quality → language → content → split → tokenize → pack → write

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
- content: C4's word blocklist (``blocklist``) and any ``scorers`` (``filters.py``), on the cleaned text;
  quality, language and content run per document in ``filter_document``;
- split: ``eval_fraction`` of the documents (stable hash of index and text) → ``validation``;
- tokenize: ``byte`` (default) or a trained tokenizer path. The fast path: byte-level BPE
  through the ``tokenizers`` library (Rust, batched, ``encode_batch_fast`` where the library
  has it: no character offsets), bytes through ``str.encode`` — the
  same ids as the teaching ``encode`` (``tests/data/test_prepare.py``);
- pack: rows of ``seq_len`` tokens, ``eos`` after each document, segment ids and positions
  (``packing.pack``, first fit).

Returns a JSON-able report: ``input_docs``, ``output_docs``, ``removed`` {``exact_dup``,
``near_dup``, ``quality``, ``language``, ``content``}, ``tokens`` (document tokens with separators, no
padding), per-stage counts (``stages``), quality and content reasons and languages tallied, every
removed document with its reason (``removed_docs``), and ``throughput`` (runner, workers, seconds,
documents/s and per worker, seconds per stage). Also written to ``out_dir/report.json``, with the
kept documents' sources in ``out_dir/documents.jsonl`` and the funnel in ``out_dir/funnel.png``.
``finish`` (split → write) is shared with the Beam pipeline (``beam_prepare.py``). The dataset and both files are
built in a temporary directory inside ``out_dir`` and swapped in only once complete (``staging``),
so ``--overwrite`` never leaves ``out_dir`` without a whole dataset, old or new.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from lineage_jax.config import ConfigError, MissingFileError
from lineage_jax.data.pipeline import langid
from lineage_jax.data.pipeline.dedup import exact_dedup, near_dedup
from lineage_jax.data.pipeline.filters import apply_filters, content_filters
from lineage_jax.data.pipeline.funnel import plot_funnel
from lineage_jax.data.pipeline.packing import pack
from lineage_jax.data.pipeline.quality import QualityConfig, clean_document, quality_reasons
from lineage_jax.data.pipeline.staging import OUTPUTS, _write, recover, staging  # noqa: F401 (prep.staging)
from lineage_jax.data.prepared import PreparedTokens, dataset_dir
from lineage_jax.data.sources import expand_text_files, read_text_file
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
    blocklist: str | None = None            # C4's word blocklist: 'default' (the placeholder) or a file
    scorers: tuple[str, ...] = ()           # 'module:function>=threshold' content scorers
    plot: bool = True                       # write funnel.png beside report.json

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
        content_filters(self.blocklist, self.scorers)          # a bad file or spec: one line, before any work
        return self


# ----------------------------------------------------------------------------- read

def input_files(inputs: Sequence[str]) -> list[Path]:
    """The files ``inputs`` name (directories walked, globs expanded), in the order documents are numbered."""
    try:
        return expand_text_files(list(inputs))
    except MissingFileError as e:
        raise MissingFileError(str(e).replace("data.text_files", "--inputs")) from None


def read_file_documents(path: Path, text_key: str = "text") -> list[tuple[str, str]]:
    """[(source, document)] of one file: a text file is one document, a ``.jsonl`` line is one (``path:line``)."""
    text = read_text_file(path, "--inputs")
    if path.suffix != ".jsonl":
        return [(str(path), text)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--inputs: '{path}' line {n} is not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
            raise ConfigError(f"--inputs: '{path}' line {n} has no string field '{text_key}'")
        out.append((f"{path}:{n}", record[text_key]))
    return out


def read_documents(inputs: Sequence[str], text_key: str = "text") -> tuple[list[str], list[str]]:
    """(documents, their sources), every file of ``input_files`` in turn (``read_file_documents``)."""
    pairs = [pair for path in input_files(inputs) for pair in read_file_documents(path, text_key)]
    return [d for _, d in pairs], [s for s, _ in pairs]


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


STAGES = ("exact_dup", "near_dup", "quality", "language", "content")   # removal stages, in order


def filter_document(doc: str, cfg: PrepareConfig, ident, languages: Sequence[str], filters=()) -> dict:
    """The per-document stages after dedup, for one document: ``{"label": language}`` plus either
    ``"text"`` (the cleaned text kept) or ``"stage"`` (quality, language or content) and ``"info"``
    (the reason). Pure in ``doc``; the in-process and the Beam pipelines both call it."""
    label = ident.predict(doc)
    qcfg = _quality_cfg(cfg, label)
    reasons = quality_reasons(doc, qcfg)
    if reasons:
        return {"label": label, "stage": "quality", "info": {"reason": ",".join(reasons), "reasons": reasons}}
    if label not in languages:
        return {"label": label, "stage": "language",
                "info": {"reason": f"language {label} not in {','.join(languages)}", "language": label}}
    text = clean_document(doc, qcfg)                      # C4 drops lines, not documents
    refusal = apply_filters(text, filters)
    if refusal is not None:
        return {"label": label, "stage": "content", "info": refusal}
    return {"label": label, "text": text}


def setup(out_dir: str, cfg: PrepareConfig):
    """Checks before any work: (validated cfg, languages, out path, tokenizer, content filters)."""
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
    return cfg, languages, out, tokenizer, content_filters(cfg.blocklist, cfg.scorers)


def prepare(inputs: Sequence[str], out_dir: str, cfg: PrepareConfig = PrepareConfig(), *,
            progress: bool = False) -> dict:
    """Run every stage (module docstring) in this process and write the dataset into ``out_dir``; the report."""
    cfg, languages, out, tokenizer, filters = setup(out_dir, cfg)
    t0 = time.perf_counter()
    docs, srcs = read_documents(inputs, cfg.text_key)
    seconds = {"read": time.perf_counter() - t0}
    removed_docs: list[dict] = []
    alive = list(range(len(docs)))

    def record(stage: str, kept_local: list[int], details: dict[int, dict], t: float) -> None:
        nonlocal alive
        for j, info in sorted(details.items()):
            removed_docs.append({"source": srcs[alive[j]], "stage": stage, **info})
        alive = [alive[j] for j in kept_local]
        seconds[stage] = time.perf_counter() - t

    with _bar(progress, total=4, desc="prepare", unit="stage") as bar:
        bar.set_postfix_str("exact dedup")
        t = time.perf_counter()
        kept, rem = exact_dedup([docs[i] for i in alive])
        record("exact_dup", kept, {j: {"reason": "exact duplicate", "duplicate_of": srcs[alive[f]]} for j, f in rem}, t)
        bar.update()

        bar.set_postfix_str("near dedup")
        t = time.perf_counter()
        kept, rem = near_dedup([docs[i] for i in alive], cfg.near_dup_threshold, cfg.num_perm, cfg.shingle_ngram)
        record("near_dup", kept, {j: near_dup_info(srcs[alive[f]], jac, cfg) for j, f, jac in rem}, t)
        bar.update()

        bar.set_postfix_str("quality, language, content")
        t = time.perf_counter()
        ident = langid.default_identifier()
        verdicts = [filter_document(docs[i], cfg, ident, languages, filters)
                    for i in _bar(progress, iterable=alive, desc="filters", unit="doc")]
        for stage in ("quality", "language", "content"):
            removed_docs.extend({"source": srcs[i], "stage": stage, **v["info"]}
                                for i, v in zip(alive, verdicts) if v.get("stage") == stage)
        kept_docs = [(srcs[i], v["text"], v["label"]) for i, v in zip(alive, verdicts) if "text" in v]
        labels = [v["label"] for v in verdicts if v.get("stage") != "quality"]
        seconds["filters"] = time.perf_counter() - t
        bar.update()

        bar.set_postfix_str("tokenize, pack, write")
        report = finish(out, cfg, tokenizer, len(docs), removed_docs, kept_docs, labels, seconds=seconds,
                        t0=t0, runner={"runner": "in_process", "workers": 1})
        bar.update()
    return report


def near_dup_info(duplicate_of: str, jac: float, cfg: PrepareConfig) -> dict:
    return {"reason": f"jaccard {jac:.3f} >= {cfg.near_dup_threshold}", "duplicate_of": duplicate_of, "jaccard": jac}


def finish(out: Path, cfg: PrepareConfig, tokenizer, n_in: int, removed_docs: list[dict],
           kept: list[tuple[str, str, str]], labels: Sequence[str], *, ids: list[np.ndarray] | None = None,
           encode_path: str | None = None, seconds: dict | None = None, t0: float, runner: dict) -> dict:
    """What both pipelines share after filtering: split, tokenize (unless ``ids`` are given), pack,
    the report, and the dataset written through ``staging``.

    ``removed_docs``: {source, stage, reason, …} in stage order then document order; ``kept``:
    (source, cleaned text, language) in document order; ``labels``: the language of every document
    that passed quality (the languages tally)."""
    counts = Counter(r["stage"] for r in removed_docs)
    if not kept:
        raise ConfigError(f"no document is left of {n_in}: removed " + ", ".join(f"{k} {counts[k]}" for k in STAGES)
                          + "; loosen the filters (e.g. --languages, --near-dup-threshold)")
    stage_rows, left = [{"stage": "read", "docs_in": n_in, "removed": 0, "docs_out": n_in}], n_in
    for stage in STAGES:
        stage_rows.append({"stage": stage, "docs_in": left, "removed": counts[stage], "docs_out": left - counts[stage]})
        left -= counts[stage]
    kept_docs = [d for _, d, _ in kept]
    t = time.perf_counter()
    if ids is None:
        ids, encode_path = encode_documents(kept_docs, tokenizer, cfg.fast)
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
    stage_rows.append({"stage": "tokenize", "docs_in": len(kept), "tokens": tokens, "path": encode_path})
    reasons_tally = Counter(q for r in removed_docs if r["stage"] == "quality" for q in r["reasons"])
    content_tally = Counter(r["reason"] for r in removed_docs if r["stage"] == "content")
    report = {"input_docs": n_in, "output_docs": len(kept), "removed": {k: counts[k] for k in STAGES},
              "tokens": tokens, "stages": stage_rows, "quality_reasons": dict(sorted(reasons_tally.items())),
              "content_reasons": dict(sorted(content_tally.items())),
              "languages": dict(sorted(Counter(labels).items())), "splits": split_report,
              "tokenizer": {**{k: meta[k] for k in ("tokenizer", "tokenizer_name", "vocab_size", "eos_id")},
                            "encode_path": encode_path},
              "seq_len": cfg.seq_len, "out_dir": str(out), "dataset_dir": str(dataset_dir(out)),
              "removed_docs": removed_docs}
    sources = [{"split": name, "document": d, "source": kept[i][0]}
               for name, idx in (("train", train_idx), ("validation", val_idx)) for d, i in enumerate(idx)]
    with staging(out) as tmp:                            # built beside the old dataset, swapped in when whole
        nonempty = {k: v for k, v in splits.items() if len(v["tokens"])}   # TFDS refuses an empty split (one
        _write(tmp, PreparedTokens, nonempty, meta)                         # document: no validation split)
        wall = time.perf_counter() - t0
        report["throughput"] = {**runner, "seconds": round(wall, 3), "docs_per_s": round(n_in / wall, 1),
                                "docs_per_s_per_worker": round(n_in / wall / runner["workers"], 1),
                                "stage_seconds": {k: round(v, 3) for k, v in
                                                  {**(seconds or {}), "tokenize_pack_write": time.perf_counter() - t}.items()}}
        (tmp / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "documents.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sources),
                                             encoding="utf-8")
        if cfg.plot:
            plot_funnel(report, tmp / "funnel.png")
    return report


__all__ = ["PrepareConfig", "prepare", "read_documents", "encode_documents", "split_indices"]
