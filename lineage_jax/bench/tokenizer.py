"""``lineage bench tokenizer``: byte-level BPE training and encoding throughput, the teaching
implementation and the fast path side by side with the ``tokenizers`` library itself.

Corpus: the running Python's standard-library source (``.py`` files in sorted order, tests
skipped; ``stdlib_docs.module_files``), cut at a byte budget; one document per file. It
ships with every Python, so the figures are reproducible offline.

- training (vocabulary ``vocab``): ``train_bpe`` (the incremental teaching trainer, Python),
  ``train_bpe(fast=True)`` (the fast path) and a ``tokenizers`` ``BpeTrainer`` built
  directly; the merges are checked equal;
- encoding the corpus: a fresh ``ByteLevelBPETokenizer.encode`` per document (teaching, its
  word cache cold), ``encode_batch(fast=True)`` (the tokenizer's own fast method, through
  ``tokenizers``' ``encode_batch``) and ``prepare``'s ``encode_documents`` (the fast path that
  ``lineage data prepare`` runs: ``encode_batch_fast``, its surrogate check, int32 arrays),
  against ``tokenizers.Tokenizer.encode_batch_fast`` (its fastest batch call; ``encode_batch``
  where missing) on the same ``tokenizer.json``, ids included; the ids are checked equal.

Times are the best of ``rounds`` (the machine is shared and noisy; the minimum is the least
disturbed run). Ratios are time over ``tokenizers``' time. Target: the fast path's encoding
within 1.2× of ``tokenizers`` (``prepare_fast`` in the report).
"""
from __future__ import annotations

import os
import time

TARGET = 1.2
FULL = {"bytes": 2_000_000, "vocab": 2048, "rounds": 3}
QUICK = {"bytes": 150_000, "vocab": 400, "rounds": 2}


def stdlib_corpus(max_bytes: int) -> list[str]:
    """Standard-library source files, in sorted order, until ``max_bytes`` of UTF-8."""
    from lineage_jax.data.stdlib_docs import module_files
    docs, total = [], 0
    for _, path in module_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return docs


def _best(fn, rounds: int):
    best, out = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _tokenizers_trainer(docs, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer)
    return tok


def measure(max_bytes: int, vocab: int, rounds: int) -> dict:
    import json

    import tokenizers

    from lineage_jax.data.pipeline.prepare import encode_documents
    from lineage_jax.tokenize.bpe_train import train_bpe
    from lineage_jax.tokenize.bytelevel import ByteLevelBPETokenizer, load_tokenizer_json

    docs = stdlib_corpus(max_bytes)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    r: dict = {"corpus": {"source": "Python stdlib source", "docs": len(docs), "bytes": n_bytes},
               "vocab_size": vocab, "rounds": rounds, "cpus": os.cpu_count(), "target": TARGET,
               "tokenizers_version": tokenizers.__version__}

    teach_s, teach = _best(lambda: train_bpe(docs, vocab), max(1, rounds - 1))
    fast_s, fast = _best(lambda: train_bpe(docs, vocab, fast=True), rounds)
    hf_s, hf = _best(lambda: _tokenizers_trainer(docs, vocab), rounds)
    hf_merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                 for m in json.loads(hf.to_str())["model"]["merges"]]
    r["train"] = {"same_merges": teach.merges == fast.merges == hf_merges, "merges": len(teach.merges)}
    for name, s in (("teaching", teach_s), ("fast", fast_s), ("tokenizers", hf_s)):
        r["train"][f"{name}_s"] = s
        r["train"][f"{name}_over_tokenizers"] = s / hf_s

    spec = teach.to_json()
    hf_tok = tokenizers.Tokenizer.from_str(spec)
    ours = load_tokenizer_json_from_str(spec, load_tokenizer_json)
    ours.fast()                                                     # build the Rust tokenizer outside the timing
    teach_enc_s, teach_ids = _best(lambda: [ByteLevelBPETokenizer(teach.vocab, teach.merges, teach.added_tokens)
                                            .encode(d) for d in docs], max(1, rounds - 1))
    fast_enc_s, fast_ids = _best(lambda: ours.encode_batch(docs, fast=True), rounds)
    prep_s, prep_ids = _best(lambda: encode_documents(docs, ours, fast=True)[0], rounds)
    hf_batch = getattr(hf_tok, "encode_batch_fast", hf_tok.encode_batch)     # the library's fastest batch call
    hf_enc_s, hf_ids = _best(lambda: [e.ids for e in hf_batch(docs, add_special_tokens=False)], rounds)
    n_tokens = sum(map(len, hf_ids))
    same = teach_ids == fast_ids == hf_ids and all(a.tolist() == b for a, b in zip(prep_ids, hf_ids))
    enc = {"tokens": n_tokens, "same_ids": same}
    for name, s in (("teaching", teach_enc_s), ("fast", fast_enc_s), ("prepare_fast", prep_s),
                    ("tokenizers", hf_enc_s)):
        enc[f"{name}_s"] = s
        enc[f"{name}_mb_per_s"] = n_bytes / s / 1e6
        enc[f"{name}_over_tokenizers"] = s / hf_enc_s
    enc["meets_target"] = enc["prepare_fast_over_tokenizers"] <= TARGET
    r["encode"] = enc
    return r


def load_tokenizer_json_from_str(spec: str, loader):
    """Our loader on a ``tokenizer.json`` string (through a temporary file)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tokenizer.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(spec)
        return loader(path)


def run(args) -> dict:
    """``lineage bench tokenizer [--quick]``: the measurements of ``measure`` as a dict."""
    sizes = QUICK if getattr(args, "quick", False) else FULL
    return measure(sizes["bytes"], sizes["vocab"], sizes["rounds"])


def report(r: dict) -> str:
    c, t, e = r["corpus"], r["train"], r["encode"]
    lines = [f"corpus: {c['source']}, {c['docs']} docs, {c['bytes'] / 1e6:.2f} MB; vocab {r['vocab_size']}; "
             f"best of {r['rounds']}; {r['cpus']} CPUs; tokenizers {r['tokenizers_version']}",
             "", f"{'train':<14} {'seconds':>9} {'vs tokenizers':>14}"]
    for k in ("teaching", "fast", "tokenizers"):
        lines.append(f"{k:<14} {t[f'{k}_s']:>9.3f} {t[f'{k}_s'] / t['tokenizers_s']:>13.2f}x")
    lines.append(f"same merges: {t['same_merges']} ({t['merges']} merges)")
    lines += ["", f"{'encode':<14} {'seconds':>9} {'MB/s':>8} {'vs tokenizers':>14}"]
    for k in ("teaching", "fast", "prepare_fast", "tokenizers"):
        lines.append(f"{k:<14} {e[f'{k}_s']:>9.3f} {e[f'{k}_mb_per_s']:>8.2f} {e[f'{k}_over_tokenizers']:>13.2f}x")
    lines.append(f"same ids: {e['same_ids']} ({e['tokens']:,} tokens); target: fast path within {r['target']}x of "
                 f"tokenizers: {'met' if e['meets_target'] else 'NOT met'} ({e['prepare_fast_over_tokenizers']:.2f}x)")
    return "\n".join(lines)
