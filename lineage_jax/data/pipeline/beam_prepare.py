"""``lineage data prepare --runner direct``: the same stages as an Apache Beam pipeline.

The stages are ``prepare``'s own pure functions, wrapped as Beam transforms; nothing is copied:

    files ─ read (read_file_documents) ─▶ (id, source, text), id = (file number, document number)
      exact dedup   GroupByKey on exact_hash(text); the lowest id of a group stays
      near dedup    minhash_signature + band_keys ─ GroupByKey on (band, key) ─▶ candidate pairs
                    ─ Distinct ─ two CoGroupByKey joins with the shingle sets ─▶ verified pairs
                    (jaccard ≥ threshold) ─ connected components (a union-find CombineFn: partial
                    forests on the workers, merged) ─ GroupByKey on the component's root ─
                    resolve_near_duplicates per component
      filters       filter_document (quality, language, content filters) per document
      tokenize      encode_documents on batches (BatchElements)
    ─▶ records (JSON lines) ─▶ the driver: split, pack, write the TFDS dataset (prepare.finish)

Order: a PCollection has none, so every document carries its id, and every rule that says
"the first" means the lowest id: the first of an exact group, and the keep-the-first rule of
near-duplicate groups (``dedup.resolve_near_duplicates``: a document goes when an earlier kept
document is its verified near-duplicate). That rule decides each connected component of the
verified pairs on its own, so resolving components apart gives exactly ``near_dedup``'s answer,
including groups whose pairs were found in different LSH bands. Packing is first fit over the
whole corpus in document order, so it runs once, on the driver, from the tokenized records:
the dataset is row for row the in-process one (``tests/data/test_beam_prepare.py``).

Runners: ``DirectRunner`` here (``workers`` > 1: ``direct_running_mode=multi_processing``);
``beam_args`` are handed to ``PipelineOptions`` after these, so ``--runner=FlinkRunner`` or
``--runner=DataflowRunner`` there wins (docs/course/03_tokenization_data.md; not run here). The records go to
``temp_dir`` (default: a ``.prepare-PID-beam`` directory inside ``out``), which every worker must
be able to write; the inputs must be readable from the workers too.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from lineage_jax.config import ConfigError, UserError
from lineage_jax.data.pipeline import langid
from lineage_jax.data.pipeline.dedup import (band_keys, choose_bands_rows, exact_hash, jaccard, minhash_signature,
                                             resolve_near_duplicates, shingles)
from lineage_jax.data.pipeline.filters import content_filters
from lineage_jax.data.pipeline.prepare import (STAGES, PrepareConfig, encode_documents, filter_document, finish,
                                               input_files, near_dup_info, read_file_documents, setup)
from lineage_jax.tokenize import get_tokenizer

HEAD = 256          # characters of a kept document the driver needs (split_indices hashes d[:256])


# ----------------------------------------------------------------------------- the stages as functions

def read_file(item, text_key: str):
    """(file number, path) → (id, source, text) per document; a user error becomes an 'error' record."""
    fno, path = item
    try:
        for dno, (src, doc) in enumerate(read_file_documents(Path(path), text_key)):
            yield (fno, dno), src, doc
    except UserError as e:
        yield beam.pvalue.TaggedOutput("record", {"kind": "error", "file": fno, "message": str(e)})


def exact_group(item):
    """One exact-hash group: the lowest id stays; the others are removal records."""
    _, members = item
    members = sorted(members)
    yield members[0]
    for doc_id, src, _ in members[1:]:
        yield beam.pvalue.TaggedOutput("record", {"kind": "removed", "id": doc_id, "source": src, "stage": "exact_dup",
                                                  "reason": "exact duplicate", "duplicate_of": members[0][1]})


def signature(doc, cfg: PrepareConfig, bands: int, rows: int):
    """(id, source, shingle set, band keys) of one document: near_dedup's own shingles and MinHash."""
    doc_id, src, text = doc
    sh = shingles(text, cfg.shingle_ngram)
    return doc_id, src, sh, band_keys(minhash_signature(sh, cfg.num_perm), bands, rows)


def bucket_pairs(item):
    """All pairs (i, j), i < j, of one LSH bucket."""
    _, ids = item
    ids = sorted(ids)
    for x, i in enumerate(ids):
        for j in ids[x + 1:]:
            yield i, j


def join_left(item):
    """Pairs keyed by their first id, joined with its shingles: (j, (i, source_i, shingles_i))."""
    i, grouped = item
    for src, sh in grouped["sh"]:
        for j in grouped["pairs"]:
            yield j, (i, src, sh)


def join_right(item, threshold: float):
    """Pairs keyed by their second id, joined with its shingles: verified edges (i, j, jaccard, src_i, src_j)."""
    j, grouped = item
    for src_j, sh_j in grouped["sh"]:
        for i, src_i, sh_i in grouped["left"]:
            sim = jaccard(sh_i, sh_j)
            if sim >= threshold:
                yield i, j, float(sim), src_i, src_j


class UnionFind(beam.CombineFn):
    """Connected components of the verified pairs: each worker builds a forest of its pairs, the
    forests are merged, and every node maps to its component's smallest id (deterministic)."""

    def create_accumulator(self):
        return {}

    @staticmethod
    def _find(parent, x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    def _union(self, parent, a, b):
        ra, rb = self._find(parent, a), self._find(parent, b)
        parent.setdefault(ra, ra)
        parent.setdefault(rb, rb)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        return parent

    def add_input(self, parent, edge):
        return self._union(parent, edge[0], edge[1])

    def merge_accumulators(self, accumulators):
        merged = {}
        for acc in accumulators:
            for node, up in acc.items():
                self._union(merged, node, up)
        return merged

    def extract_output(self, parent):
        return {node: self._find(parent, node) for node in list(parent)}


def resolve_component(item, cfg: PrepareConfig):
    """One component's edges → its removal records (``resolve_near_duplicates``)."""
    _, edges = item
    src = {}
    for i, j, _, src_i, src_j in edges:
        src[i], src[j] = src_i, src_j
    for j, f, sim in resolve_near_duplicates([(i, j, sim) for i, j, sim, _, _ in edges]):
        yield {"kind": "removed", "id": j, "source": src[j], "stage": "near_dup", **near_dup_info(src[f], sim, cfg)}


class FilterDoc(beam.DoFn):
    """``filter_document`` per document: a kept (id, source, text, label) or a removal record; the label
    of every document past quality as a 'label' record (the languages tally)."""

    def __init__(self, cfg: PrepareConfig):
        self.cfg = cfg

    def setup(self):
        self.ident = langid.default_identifier()
        self.languages = langid.parse_languages(self.cfg.languages)
        self.filters = content_filters(self.cfg.blocklist, self.cfg.scorers)

    def process(self, doc):
        doc_id, src, text = doc
        v = filter_document(text, self.cfg, self.ident, self.languages, self.filters)
        if v.get("stage") != "quality":
            yield beam.pvalue.TaggedOutput("record", {"kind": "label", "label": v["label"]})
        if "text" in v:
            yield doc_id, src, v["text"], v["label"]
        else:
            yield beam.pvalue.TaggedOutput("record", {"kind": "removed", "id": doc_id, "source": src,
                                                      "stage": v["stage"], **v["info"]})


class Tokenize(beam.DoFn):
    """``encode_documents`` on a batch of kept documents → 'kept' records (ids as base64 int32)."""

    def __init__(self, cfg: PrepareConfig):
        self.cfg = cfg

    def setup(self):
        self.tokenizer = get_tokenizer(self.cfg.tokenizer)

    def process(self, batch):
        ids, path = encode_documents([text for _, _, text, _ in batch], self.tokenizer, self.cfg.fast)
        for (doc_id, src, text, label), x in zip(batch, ids):
            yield {"kind": "kept", "id": doc_id, "source": src, "head": text[:HEAD], "label": label, "path": path,
                   "ids": base64.b64encode(np.asarray(x, np.int32).tobytes()).decode("ascii")}


# ----------------------------------------------------------------------------- the pipeline

def build(p, files: Sequence[str], cfg: PrepareConfig, records_prefix: str) -> None:
    """The pipeline on ``p``: ``files`` in, JSON-line records out under ``records_prefix``."""
    read = (p | "files" >> beam.Create(list(enumerate(files)))
            | "read" >> beam.FlatMap(read_file, cfg.text_key).with_outputs("record", main="docs"))
    records = stages(read.docs, cfg)
    ((read.record, records) | "all records" >> beam.Flatten()
     | "json" >> beam.Map(json.dumps) | "write" >> beam.io.WriteToText(records_prefix, file_name_suffix=".jsonl"))


def stages(docs, cfg: PrepareConfig):
    """Every stage after read on a PCollection of (id, source, text), in any order: a PCollection of
    records (dicts: kind 'removed', 'kept' or 'label')."""
    bands, rows = choose_bands_rows(cfg.near_dup_threshold, cfg.num_perm)
    exact = (docs | "by hash" >> beam.Map(lambda d: (exact_hash(d[2]), d))
             | "exact groups" >> beam.GroupByKey()
             | "first of each" >> beam.FlatMap(exact_group).with_outputs("record", main="docs"))
    sigs = exact.docs | "minhash" >> beam.Map(signature, cfg, bands, rows)
    pairs = (sigs | "band keys" >> beam.FlatMap(lambda s: (((b, k), s[0]) for b, k in enumerate(s[3])))
             | "buckets" >> beam.GroupByKey() | "pairs" >> beam.FlatMap(bucket_pairs) | "distinct" >> beam.Distinct())
    sh = sigs | "shingles" >> beam.Map(lambda s: (s[0], (s[1], s[2])))
    left = ({"pairs": pairs, "sh": sh} | "join i" >> beam.CoGroupByKey() | "by j" >> beam.FlatMap(join_left))
    edges = ({"left": left, "sh": sh} | "join j" >> beam.CoGroupByKey()
             | "verify" >> beam.FlatMap(join_right, cfg.near_dup_threshold))
    roots = edges | "components" >> beam.CombineGlobally(UnionFind())
    near = (edges | "by root" >> beam.Map(lambda e, r: (r[e[0]], e), beam.pvalue.AsSingleton(roots))
            | "component groups" >> beam.GroupByKey() | "resolve" >> beam.FlatMap(resolve_component, cfg))
    survivors = ({"doc": exact.docs | "doc by id" >> beam.Map(lambda d: (d[0], d)),
                  "gone": near | "gone by id" >> beam.Map(lambda r: (tuple(r["id"]), 1))}
                 | "drop near" >> beam.CoGroupByKey()
                 | "near kept" >> beam.FlatMap(lambda kv: [] if kv[1]["gone"] else kv[1]["doc"]))
    filt = survivors | "filters" >> beam.ParDo(FilterDoc(cfg)).with_outputs("record", main="docs")
    kept = (filt.docs | "batch" >> beam.BatchElements(min_batch_size=16, max_batch_size=512)
            | "tokenize" >> beam.ParDo(Tokenize(cfg)))
    return (exact.record, near, filt.record, kept) | "stage records" >> beam.Flatten()


def pipeline_options(workers: int, beam_args: Sequence[str]) -> PipelineOptions:
    mode = "multi_processing" if workers > 1 else "in_memory"
    return PipelineOptions(["--runner=DirectRunner", f"--direct_num_workers={workers}",
                            f"--direct_running_mode={mode}", *beam_args])


def read_records(prefix: str) -> list[dict]:
    out = []
    for match in FileSystems.match([prefix + "*"])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            out.extend(json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip())
    return out


def prepare_beam(inputs: Sequence[str], out_dir: str, cfg: PrepareConfig = PrepareConfig(), *, workers: int = 1,
                 beam_args: Sequence[str] = (), temp_dir: str | None = None) -> dict:
    """``prepare`` on Beam: the same checks, stages, dataset and report (``throughput.runner`` says which)."""
    if workers < 1:
        raise ConfigError(f"--workers={workers}: must be at least 1")
    cfg, _, out, tokenizer, _ = setup(out_dir, cfg)
    t0 = time.perf_counter()
    files = [str(f) for f in input_files(inputs)]
    out.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir or str(out / f".prepare-{os.getpid()}-beam")
    prefix = FileSystems.join(tmp, "records")
    try:
        options = pipeline_options(workers, beam_args)
        with beam.Pipeline(options=options) as p:
            build(p, files, cfg, prefix)
        records = read_records(prefix)
    finally:
        if temp_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = {"beam_pipeline": time.perf_counter() - t0}
    errors = sorted((r for r in records if r["kind"] == "error"), key=lambda r: r["file"])
    if errors:
        raise ConfigError(errors[0]["message"])
    removed_docs, kept, labels = sort_records(records)
    ids = [np.frombuffer(base64.b64decode(r["ids"]), np.int32) for r in kept]
    paths = sorted({r["path"] for r in kept})
    return finish(out, cfg, tokenizer, len(removed_docs) + len(kept), removed_docs,
                  [(r["source"], r["head"], r["label"]) for r in kept], labels, ids=ids,
                  encode_path=",".join(paths) or None, seconds=seconds, t0=t0,
                  runner={"runner": options.get_all_options().get("runner") or "DirectRunner", "workers": workers})


def sort_records(records: Sequence[dict]) -> tuple[list[dict], list[dict], list[str]]:
    """(removed documents in stage order then id order, as ``prepare`` reports them; kept records in id
    order; the language labels) of the pipeline's records, which arrive in any order."""
    order = {s: k for k, s in enumerate(STAGES)}
    removed = sorted((r for r in records if r["kind"] == "removed"), key=lambda r: (order[r["stage"]], list(r["id"])))
    removed_docs = [{k: v for k, v in r.items() if k not in ("kind", "id")} for r in removed]
    kept = sorted((r for r in records if r["kind"] == "kept"), key=lambda r: list(r["id"]))
    return removed_docs, kept, [r["label"] for r in records if r["kind"] == "label"]


__all__ = ["prepare_beam", "build", "stages", "sort_records", "pipeline_options", "UnionFind", "read_records"]
