"""``lineage lesson translate``: train the original Transformer on a synthetic translation task.

    lineage lesson translate                          numbers: words -> digits, the defaults
    lineage lesson translate --task dates --steps 500 ISO dates -> "7 March 2024"
    lineage lesson translate --json                   one JSON object (loss, accuracy, examples)

Prints the final loss, the held-out exact-match accuracy of greedy decoding and a few
translations, and writes ``translate.png`` (loss and accuracy against step) into ``--out``.
The lesson itself lives in ``lineage_jax/lessons/translate.py``; JAX is imported only once the
flags are valid.
"""
from __future__ import annotations

import argparse
import json

from lineage_jax.config import ConfigError
from lineage_jax.lessons import TRANSLATE_STEPS, TRANSLATE_TASKS

DEFAULT_OUT = "runs/lesson-translate"


def register(subparsers) -> None:
    p = subparsers.add_parser("lesson", help="small end-to-end lessons (lesson translate: the original Transformer)")
    lessons = p.add_subparsers(dest="lesson", required=True, metavar="LESSON")
    t = lessons.add_parser("translate", help="train the encoder-decoder Transformer on synthetic translation",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--task", default="numbers", help=f"one of: {', '.join(TRANSLATE_TASKS)}")
    t.add_argument("--steps", type=int, default=TRANSLATE_STEPS, help="training steps")
    t.add_argument("--seed", type=int, default=0, help="fixes the split, the initialisation and the data order")
    t.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="where translate.png and summary.json go")
    t.add_argument("--d-model", type=int, default=None, help="model width (d_ff = 4 x d_model; default 64)")
    t.add_argument("--layers", type=int, default=None, help="encoder layers = decoder layers (default 2)")
    t.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_translate)


def _config(args):
    """The validated lesson config, from the flags (no JAX yet)."""
    if args.task not in TRANSLATE_TASKS:
        raise ConfigError(f"--task={args.task}: unknown; allowed: {', '.join(TRANSLATE_TASKS)}")
    for flag in ("steps", "d_model", "layers"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}={v}: must be at least 1")
    if args.d_model is not None and args.d_model % 8:
        raise ConfigError(f"--d-model={args.d_model}: must be a multiple of 8 (4 heads of even width)")
    return {k: v for k, v in (("task", args.task), ("steps", args.steps), ("seed", args.seed),
                              ("d_model", args.d_model), ("layers", args.layers)) if v is not None}


def cmd_translate(args) -> int:
    overrides = _config(args)
    from lineage_jax.lessons import translate as tr
    if "d_model" in overrides:
        overrides["d_ff"] = 4 * overrides["d_model"]
    cfg = tr.LessonConfig(**overrides)
    summary = tr.run(cfg, args.out, progress=not args.no_progress and not args.json)
    with open(f"{args.out}/summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"translate {cfg.task}: {cfg.steps} steps in {summary['seconds']:.0f} s, {summary['params']:,} parameters")
    print(f"loss (label-smoothed, eps={cfg.smoothing}) {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}; "
          f"cross-entropy {summary['first_nll']:.3f} -> {summary['final_nll']:.4f} nats/token")
    print(f"held-out exact match (greedy): {summary['accuracy']:.1%} of {summary['n_test']} "
          f"(chance {summary['chance']:.2g}; {summary['n_train']} training pairs)")
    for e in summary["examples"]:
        mark = "ok" if e["prediction"] == e["target"] else f"expected {e['target']!r}"
        print(f"  {e['source']!r} -> {e['prediction']!r}  ({mark})")
    print(f"plot: {summary.get('plot')}")
    return 0
