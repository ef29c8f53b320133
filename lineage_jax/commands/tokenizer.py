"""``lineage tokenizer train``: learn a tokenizer from text files and write it to a directory.

Kinds: ``bytelevel`` (GPT-2 byte-level BPE; ``tokenizer.json``, which ``lineage train
data.tokenizer=DIR`` and ``lineage data prepare --tokenizer DIR`` load; ``--fast`` trains
through the ``tokenizers`` library, the same merges), ``sentencepiece`` (unigram or BPE via
``--model-type``; ``spm.model``, which ``data.tokenizer=DIR`` also loads) and ``sennrich``
(Sennrich et al. 2016 character BPE with ``</w>``: the teaching algorithm; it writes
``merges.txt`` and ``vocab.json`` and is not a lossless tokenizer, so training does not take it).
Inputs are read as by ``lineage data prepare``: text files, directories, globs, ``.jsonl``.
An existing tokenizer in ``--out`` is replaced only with ``--overwrite`` (runs record their tokenizer's
SHA-256 and refuse a changed one); files are written atomically (``runs.atomic``). No JAX here.
"""
from __future__ import annotations

import json
import os
import sys
import time

from lineage_jax.config import ConfigError, UserError
from lineage_jax.runs import atomic

KINDS = ("bytelevel", "sentencepiece", "sennrich")


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenizer", help="tokenizers: train one from text files")
    sub = p.add_subparsers(dest="tokenizer_command", required=True)
    q = sub.add_parser("train", help="train a tokenizer and write it to --out (tokenizer.json / spm.model)")
    q.add_argument("--text-files", nargs="+", required=True, metavar="PATH",
                   help="text files (one document each), .jsonl (a 'text' field per line), directories, globs")
    q.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="bytelevel: specials + 256 bytes + merges; sentencepiece: pieces; sennrich: symbols")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--kind", choices=KINDS, default="bytelevel")
    q.add_argument("--fast", action="store_true", help="bytelevel: train with the tokenizers library (same merges)")
    q.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="sentencepiece only")
    q.add_argument("--min-frequency", type=int, default=2, help="bytelevel: stop when the best pair is rarer (2)")
    q.add_argument("--special-tokens", default="<|endoftext|>", help="comma-separated; the first is eos")
    q.add_argument("--overwrite", action="store_true",
                   help="replace a tokenizer already in --out (runs trained with it will then refuse to resume)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_train)


# what a tokenizer directory holds: load() reads tokenizer.json, else the one *.model; sennrich's two files
FILES = ("tokenizer.json", "spm.model", "merges.txt", "vocab.json")


def _existing(out: str) -> list[str]:
    """The tokenizer files already in ``out`` (any ``*.model`` counts: ``load`` would read it)."""
    if not os.path.isdir(out):
        return []
    return sorted(f for f in os.listdir(out) if f in FILES or f.endswith(".model"))


def _check(args) -> list[str]:
    if args.vocab_size < 1:
        raise ConfigError(f"--vocab-size={args.vocab_size}: must be a positive integer")
    specials = [s for s in args.special_tokens.split(",") if s]
    if not specials:
        raise ConfigError("--special-tokens: give at least one (the first is the document separator, eos)")
    if args.kind == "bytelevel" and args.vocab_size < len(specials) + 256:
        raise ConfigError(f"--vocab-size={args.vocab_size}: a bytelevel vocabulary holds the {len(specials)} "
                          f"special token(s) and 256 bytes, so at least {len(specials) + 256}")
    if args.fast and args.kind != "bytelevel":
        raise ConfigError(f"--fast: only with --kind bytelevel (not {args.kind})")
    if args.model_type != "unigram" and args.kind != "sentencepiece":
        raise ConfigError(f"--model-type={args.model_type}: only with --kind sentencepiece")
    if os.path.isfile(args.out):
        raise ConfigError(f"--out {args.out}: is a file; give a directory")
    found = _existing(args.out)
    if found and not args.overwrite:
        raise ConfigError(f"--out {args.out}: already holds a tokenizer ({', '.join(found)}); runs trained with it "
                          f"would decode the same ids as other text: give a new --out, or --overwrite to replace it")
    return specials


def _drop_others(out: str, written: str) -> str:
    """Remove the tokenizer files of another kind left in ``out`` from before (``load`` would prefer a stale
    ``tokenizer.json``), keeping ``written`` and its companions; returns ``written``."""
    keep = {"merges.txt", "vocab.json"} if os.path.basename(written) == "merges.txt" else {os.path.basename(written)}
    for name in _existing(out):
        if name not in keep:
            os.unlink(os.path.join(out, name))
    return written


def _progress(docs, enabled: bool, desc: str):
    from tqdm import tqdm
    return tqdm(docs, disable=not enabled, file=sys.stderr, desc=desc, unit="doc", dynamic_ncols=True)


def train_tokenizer(args) -> dict:
    """Train as ``args`` says, write it to ``args.out``; a JSON-able summary."""
    specials = _check(args)
    from lineage_jax.data.pipeline.prepare import read_documents
    try:
        docs, _ = read_documents(args.text_files)
    except UserError as e:                      # read_documents speaks for `data prepare --inputs`
        raise type(e)(str(e).replace("--inputs", "--text-files")) from None
    if not any(docs):
        raise ConfigError(f"--text-files {' '.join(args.text_files)}: no text to train on")
    progress = not args.no_progress
    t0 = time.perf_counter()
    summary = {"kind": args.kind, "documents": len(docs), "out": args.out}
    if args.kind == "bytelevel":
        from lineage_jax.tokenize.bpe_train import train_bpe
        what = "counting words (tokenizers)" if args.fast else "counting words"
        tok = train_bpe(_progress(docs, progress, what), args.vocab_size, special_tokens=specials,
                        min_frequency=args.min_frequency, fast=args.fast)
        path = _drop_others(args.out, tok.save(args.out))          # atomic (runs.atomic)
        summary.update(vocab_size=tok.vocab_size, merges=len(tok.merges), file=path, fast=args.fast,
                       name=tok.name, usable_as=f"data.tokenizer={args.out}")
    elif args.kind == "sentencepiece":
        from lineage_jax.tokenize.spm import train_sentencepiece
        try:
            tok = train_sentencepiece(list(_progress(docs, progress, "reading")), args.vocab_size,
                                      model_type=args.model_type, special_tokens=specials)
        except RuntimeError as e:                       # the trainer's own check, e.g. vocabulary too small
            raise ConfigError(f"--kind sentencepiece --vocab-size={args.vocab_size}: "
                              f"{str(e).rsplit('] ', 1)[-1].strip()}") from None
        path = _drop_others(args.out, tok.save(args.out))
        summary.update(vocab_size=tok.vocab_size, model_type=args.model_type, file=path, name=tok.name,
                       usable_as=f"data.tokenizer={args.out}")
    else:
        from lineage_jax.tokenize import sennrich
        freqs: dict[str, int] = {}
        for doc in _progress(docs, progress, "counting words"):
            for w in doc.split():
                freqs[w] = freqs.get(w, 0) + 1
        alphabet = {c for w in freqs for c in w} | {sennrich.EOW}
        merges = sennrich.learn_merges(freqs, max(0, args.vocab_size - len(alphabet)))
        symbols = sorted(alphabet) + ["".join(m) for m in merges]
        merges_txt = "#version: sennrich-2016 (lineage_jax)\n" + "".join(f"{a} {b}\n" for a, b in merges)
        vocab_json = json.dumps({s: i for i, s in enumerate(dict.fromkeys(symbols))}, ensure_ascii=False, indent=0)
        os.makedirs(args.out, exist_ok=True)
        atomic.write_text(os.path.join(args.out, "vocab.json"), vocab_json)
        path = _drop_others(args.out, os.path.join(args.out, "merges.txt"))
        atomic.write_text(path, merges_txt)
        summary.update(vocab_size=len(dict.fromkeys(symbols)), merges=len(merges), file=path,
                       usable_as="none (teaching tokenizer: whitespace is not kept); use --kind bytelevel")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def cmd_train(args) -> int:
    s = train_tokenizer(args)
    if args.json:
        print(json.dumps(s, indent=1, ensure_ascii=False))
    else:
        print(f"trained {s['kind']} tokenizer: {s['vocab_size']} tokens from {s['documents']} documents in "
              f"{s['seconds']:.2f} s -> {s['file']}\nuse it: {s['usable_as']}")
    return 0
