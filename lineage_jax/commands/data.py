"""``lineage data prepare``: raw documents → a packed, deduplicated, filtered TFDS dataset.

Runs ``lineage_jax.data.pipeline.prepare.prepare`` (its docstring lists the stages) and prints
a per-stage table, or with ``--json`` one object (``input_docs``, ``output_docs``,
``removed`` {``exact_dup``, ``near_dup``, ``quality``, ``language``, ``content``}, ``tokens``,
``throughput``, …) and writes ``funnel.png``. Every quality threshold is a ``--quality KEY=VALUE``
(a field of ``QualityConfig``); ``--blocklist`` and ``--scorer`` add content filters
(``pipeline/filters.py``). ``--runner direct`` runs the same stages on Apache Beam
(``pipeline/beam_prepare.py``), with the options after ``--`` handed to Beam.
``lineage data mixture``: what ``--steps`` steps of a ``data.mixture`` config would draw from each
component (``lineage_jax/data/mixture.py``), as mixture.json and mixture.png.
No JAX here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from lineage_jax.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="data pipeline: prepare a packed TFDS dataset from raw documents")
    sub = p.add_subparsers(dest="data_command", required=True)
    q = sub.add_parser("prepare", help="dedup, filter, identify language, tokenize and pack documents into a "
                                       "TFDS dataset (array_record)")
    q.add_argument("--inputs", nargs="+", required=True, metavar="PATH",
                   help="text files (one document each), .jsonl files (one document per line), directories, globs")
    q.add_argument("--out", required=True, metavar="DIR", help="where the dataset and report.json are written")
    q.add_argument("--json", action="store_true", help="print one JSON object (the report)")
    q.add_argument("--tokenizer", default="byte", help="'byte' (default) or a trained tokenizer directory/file")
    q.add_argument("--seq-len", type=int, default=128, help="tokens per packed row = the model's context (128)")
    q.add_argument("--languages", default="en", help="comma-separated languages to keep (en,de,fr,es,it,nl,pt,other)")
    q.add_argument("--near-dup-threshold", type=float, default=0.8, help="MinHash/LSH Jaccard threshold (0.8)")
    q.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (128)")
    q.add_argument("--shingle-ngram", type=int, default=5, help="word n-gram shingles for near dedup (5)")
    q.add_argument("--eval-fraction", type=float, default=0.05, help="documents held out as 'validation' (0.05)")
    q.add_argument("--quality", action="append", default=[], metavar="KEY=VALUE",
                   help="a quality threshold, e.g. min_words=20 or max_top_ngram_char_frac=2:0.2,3:0.18 (repeatable)")
    q.add_argument("--english-stop-words", action="store_true",
                   help="apply Gopher's English stop-word rule to every document (default: per identified language)")
    q.add_argument("--text-key", default="text", help="the JSONL field holding a document (text)")
    q.add_argument("--no-fast", action="store_true", help="tokenize with the teaching implementation, not tokenizers")
    q.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument("--blocklist", nargs="?", const="default", default=None, metavar="FILE",
                   help="drop documents containing a listed word or phrase (C4); without FILE the shipped "
                        "placeholder list (replace it with yours: one entry a line)")
    q.add_argument("--scorer", action="append", default=[], metavar="MODULE:FUNCTION>=T",
                   help="a content scorer: keep documents whose score is >= T (or '<T'); repeatable")
    q.add_argument("--runner", choices=("in_process", "direct"), default="in_process",
                   help="in_process (default: this process) or direct (Apache Beam's DirectRunner; "
                        "needs the beam extra). Options after '--' go to Beam, e.g. -- --runner=FlinkRunner")
    q.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Beam direct runner workers (processes when N > 1; default 1)")
    q.add_argument("--beam-temp", default=None, metavar="DIR",
                   help="where Beam workers write their records (default: a temporary directory in --out)")
    q.add_argument("beam_args", nargs=argparse.REMAINDER, metavar="-- BEAM_OPTIONS",
                   help="Beam pipeline options (with --runner direct), e.g. -- --direct_running_mode=multi_threading")
    q.set_defaults(func=cmd_prepare)
    m = sub.add_parser("mixture", help="preview data.mixture: what N steps would draw from each component "
                                       "(mixture.json, mixture.png), without training")
    m.add_argument("overrides", nargs="*", metavar="key=value",
                   help='config overrides, e.g. "data.mixture=[{name: A, weight: 3, epochs: 1}, {name: B}]"')
    m.add_argument("--config", default="tiny", help="YAML preset path or name in configs/ (default: tiny)")
    m.add_argument("--steps", type=int, default=1000, help="training steps to preview (1000)")
    m.add_argument("--out", required=True, metavar="DIR", help="where mixture.json and mixture.png are written")
    m.add_argument("--json", action="store_true", help="print mixture.json")
    m.set_defaults(func=cmd_mixture)


def _coerce(key: str, raw: str, default):
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(w.strip() for w in raw.split(",") if w.strip())
        if isinstance(default, dict):
            return {int(k): float(v) for k, v in (item.split(":") for item in raw.split(",") if item)}
    except ValueError:
        pass
    kind = {bool: "true/false", int: "an int", float: "a number", tuple: "comma-separated words",
            dict: "N:FRACTION,… (e.g. 2:0.2,3:0.18)"}[type(default) if type(default) in (bool, int, float, tuple, dict)
                                                      else str]
    raise ConfigError(f"--quality {key}={raw}: expected {kind}")


def quality_config(items: list[str]):
    """``QualityConfig`` with ``KEY=VALUE`` overrides; ConfigError naming a bad key or value."""
    from lineage_jax.data.pipeline.quality import QualityConfig
    base = QualityConfig()
    names = [f.name for f in dataclasses.fields(QualityConfig)]
    changes = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--quality {item}: expected KEY=VALUE, e.g. min_words=20")
        if key not in names:
            raise ConfigError(f"--quality {key}: unknown threshold; allowed: {', '.join(names)}")
        changes[key] = _coerce(key, raw, getattr(base, key))
    return dataclasses.replace(base, **changes)


def config_from_args(args):
    from lineage_jax.data.pipeline.prepare import PrepareConfig
    return PrepareConfig(seq_len=args.seq_len, tokenizer=args.tokenizer,
                         languages=tuple(s.strip() for s in args.languages.split(",") if s.strip()),
                         near_dup_threshold=args.near_dup_threshold, num_perm=args.num_perm,
                         shingle_ngram=args.shingle_ngram, quality=quality_config(args.quality),
                         stop_words_by_language=not args.english_stop_words, eval_fraction=args.eval_fraction,
                         fast=not args.no_fast, text_key=args.text_key, overwrite=args.overwrite,
                         blocklist=args.blocklist, scorers=tuple(args.scorer)).validate()


def beam_args(args) -> list[str]:
    """The Beam options after ``--``; ConfigError when Beam options or --workers come without --runner direct,
    or when apache-beam is not installed."""
    extra = list(args.beam_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    if extra and not all(a.startswith("--") for a in extra[:1]):
        raise ConfigError(f"unexpected arguments {' '.join(extra)}: Beam options go after '--' "
                          "(e.g. -- --direct_running_mode=multi_threading)")
    if args.runner != "direct":
        if extra or args.workers is not None or args.beam_temp is not None:
            raise ConfigError("--workers, --beam-temp and Beam options after '--' need --runner direct")
        return extra
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers={args.workers}: must be at least 1")
    import importlib.util
    if importlib.util.find_spec("apache_beam") is None:
        raise ConfigError("--runner direct needs Apache Beam: pip install -e '.[beam]' (or use --runner in_process)")
    return extra


def format_report(r: dict) -> str:
    lines = [f"{'stage':<10} {'docs in':>8} {'removed':>8} {'docs out':>9}"]
    for s in r["stages"]:
        if "removed" in s:
            lines.append(f"{s['stage']:<10} {s['docs_in']:>8} {s['removed']:>8} {s['docs_out']:>9}")
    lines.append(f"{'tokenize':<10} {r['output_docs']:>8} docs -> {r['tokens']:,} tokens "
                 f"({r['tokenizer']['tokenizer']}, {r['tokenizer']['encode_path']})")
    if r["quality_reasons"]:
        lines.append("quality reasons: " + ", ".join(f"{k} {v}" for k, v in r["quality_reasons"].items()))
    if r.get("content_reasons"):
        lines.append("content reasons: " + ", ".join(f"{k} {v}" for k, v in r["content_reasons"].items()))
    lines.append("languages (after quality): " + ", ".join(f"{k} {v}" for k, v in r["languages"].items()))
    for name, s in r["splits"].items():
        lines.append(f"{name}: {s['docs']} docs, {s['rows']} rows of {r['seq_len']} tokens, "
                     f"{s['tokens']:,} tokens + {s['padding']:,} padding")
    tp = r.get("throughput")
    if tp:
        lines.append(f"throughput: {r['input_docs']} docs in {tp['seconds']:.1f} s = {tp['docs_per_s']:,.0f} docs/s "
                     f"({tp['runner']}, {tp['workers']} worker(s): {tp['docs_per_s_per_worker']:,.0f} docs/s each)")
    lines.append(f"dataset: {r['dataset_dir']} (report.json, documents.jsonl and funnel.png in {r['out_dir']})")
    from lineage_jax.config import DataConfig
    if "prepared_dir" in {f.name for f in dataclasses.fields(DataConfig)}:
        tok = r["tokenizer"]
        lines.append(f"train on it: lineage train data.prepared_dir={r['out_dir']} data.tokenizer={tok['tokenizer']} "
                     f"model.context={r['seq_len']}" + (f" model.vocab_size={tok['vocab_size']}"
                                                         if tok["tokenizer"] != "byte" else ""))
    return "\n".join(lines)


def cmd_prepare(args) -> int:
    cfg = config_from_args(args)
    extra = beam_args(args)
    if args.runner == "direct":
        from lineage_jax.data.pipeline.beam_prepare import prepare_beam
        report = prepare_beam(args.inputs, args.out, cfg, workers=args.workers or 1, beam_args=extra,
                              temp_dir=args.beam_temp)
    else:
        from lineage_jax.data.pipeline.prepare import prepare
        report = prepare(args.inputs, args.out, cfg, progress=not args.no_progress)
    print(json.dumps(report, indent=1, ensure_ascii=False) if args.json else format_report(report))
    return 0


def cmd_mixture(args) -> int:
    """The mixture plan of the config, over ``--steps`` steps of ``train.batch_size``: realised
    proportions and epochs per component, as training would draw them (the same pure plan)."""
    from pathlib import Path

    from lineage_jax.config import load_config
    if args.steps < 1:
        raise ConfigError(f"--steps={args.steps}: must be at least 1")
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.mixture:
        raise ConfigError('data.mixture is empty: give it, e.g. "data.mixture=[{name: A, weight: 3}, {name: B}]"')
    from lineage_jax.data.mixture import build_mixture, plot_mixture
    from lineage_jax.tokenize import get_tokenizer
    train, _ = build_mixture(cfg.data, cfg.train.seed, cfg.model.context, get_tokenizer(cfg.data.tokenizer))
    plan, B = train.plan, cfg.train.batch_size
    if args.steps * B > plan.total:
        raise ConfigError(f"--steps={args.steps}: the mixture ends after {int(plan.total)} examples = "
                          f"{int(plan.total) // B} steps of {B}; raise a component's epochs or preview fewer steps")
    report = {**plan.realised(args.steps * B), "steps": args.steps, "batch_size": B}
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixture.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    plot_mixture(plan, B, args.steps, out / "mixture.png")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{'component':<30} {'weight':>7} {'share':>7} {'examples':>9} {'epochs':>7} {'limit':>6}")
        for c in report["components"]:
            print(f"{c['name'][-30:]:<30} {c['weight']:>7.3f} {c['proportion']:>7.3f} {c['count']:>9} "
                  f"{c['epochs']:>7.2f} {c['epoch_limit'] or '-':>6}")
        print(f"{report['examples']} examples = {args.steps} steps of {B}; plot: {out / 'mixture.png'}")
    return 0
