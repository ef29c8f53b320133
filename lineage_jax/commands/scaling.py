"""``lineage scaling``: count a model, predict a compute-optimal run, fit laws to runs, run a sweep.

    lineage scaling count [--config NAME] [--tokens D] [--json] [key=value ...]
    lineage scaling predict --flops C | --params N [--constants chinchilla|epoch|kaplan|PATH/scaling.json] [--json]
    lineage scaling fit --runs DIR | --points FILE.csv [--out OUT] [--bootstrap N] [--json]
    lineage scaling sweep --budgets 3e11,1e12,3e12 --sizes 5 --out DIR [--devices N] [key=value ...]

Every number and path is checked before JAX is imported.
"""
from __future__ import annotations

import argparse
import json
import math
import os

from lineage_jax.config import ConfigError


def _number(flag: str):
    def parse(raw: str) -> float:
        try:
            v = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}={raw}: not a number (e.g. 1e21)") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"{flag}={raw}: must be a positive finite number")
        return v
    return parse


def register(subparsers) -> None:
    p = subparsers.add_parser("scaling", help="scaling laws: count, predict, fit, sweep (Kaplan 2020, Chinchilla 2022)")
    sub = p.add_subparsers(dest="scaling_command", required=True)

    c = sub.add_parser("count", help="parameters (total, non-embedding, active, matmul) and training FLOPs of a config")
    c.add_argument("--config", default="tiny", help="YAML preset path or name in configs/ (default: tiny)")
    c.add_argument("--tokens", type=_number("--tokens"), default=None,
                   help="training tokens D (default: train.steps × batch × context)")
    c.add_argument("--json", action="store_true")
    c.add_argument("overrides", nargs="*", metavar="section.key=value")
    c.set_defaults(func=cmd_count)

    q = sub.add_parser("predict", help="compute-optimal N, D, tokens per parameter and loss for a budget")
    q.add_argument("--flops", type=_number("--flops"), default=None, metavar="C", help="training FLOPs")
    q.add_argument("--params", type=_number("--params"), default=None, metavar="N",
                   help="instead of --flops: the D and C for which N is compute-optimal")
    q.add_argument("--constants", default="chinchilla", help="chinchilla | epoch | kaplan | PATH/scaling.json")
    q.add_argument("--json", action="store_true", help="print n_opt, d_opt, flops, tokens_per_param, loss, constants")
    q.set_defaults(func=cmd_predict)

    f = sub.add_parser("fit", help="Chinchilla's three approaches on runs -> scaling.json + PNGs")
    f.add_argument("--runs", default=None, metavar="DIR", help="a directory of run directories (e.g. a sweep's)")
    f.add_argument("--points", default=None, metavar="CSV", help="instead: columns params,tokens,loss[,budget]")
    f.add_argument("--out", default=None, metavar="OUT", help="where scaling.json and the PNGs go "
                                                              "(default: the runs directory, or the CSV's)")
    f.add_argument("--bootstrap", type=int, default=100, metavar="N", help="resamples for the intervals (0: none)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_fit)

    from lineage_jax.commands import scaling_sweep
    scaling_sweep.register(sub)


def cmd_count(args) -> int:
    from lineage_jax.config import load_config
    cfg = load_config(args.config, args.overrides)
    from lineage_jax.scaling.count import count
    n = count(cfg.model)
    tokens = args.tokens or float(cfg.train.steps * cfg.train.batch_size * cfg.model.context)
    out = {**n.to_json(), "tokens": tokens, "flops_6nd": n.training_flops(tokens), "flops_palm":
           n.training_flops(tokens, "palm"), "tokens_per_param": tokens / n.matmul}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    m = cfg.model
    moe = f", MoE {m.experts} experts top-{m.moe_k} every {m.moe_every}" if m.moe_every else ""
    print(f"model: {m.arch} {m.layers}L width {m.width} heads {m.heads} (kv {m.kv_heads or m.heads}) "
          f"context {m.context} vocab {m.vocab_size}{moe}")
    print(f"parameters: total {n.total:,}; non-embedding (Kaplan's N) {n.non_embedding:,}; active {n.active:,}; "
          f"matmul (6N's N) {n.matmul:,}")
    print(f"FLOPs per token: 6N = {n.flops_per_token_6n:.4g}; with attention (PaLM) = {n.flops_per_token_palm:.4g}")
    print(f"training on D = {tokens:.4g} tokens: C = 6ND = {out['flops_6nd']:.4g} FLOPs "
          f"(PaLM form {out['flops_palm']:.4g}); {out['tokens_per_param']:.3g} tokens per parameter")
    return 0


def cmd_predict(args) -> int:
    from lineage_jax.scaling import laws
    law = laws.constants(args.constants)
    r = laws.predict(law, flops=args.flops, params=args.params)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    loss = f"{r['loss']:.4f}" if r["loss"] is not None else "n/a (this law predicts no loss)"
    print(f"constants: {law.name} (a = {law.a:.3f}, b = {law.b:.3f})")
    print(f"C = {r['flops']:.4g} FLOPs: N_opt = {r['n_opt']:.4g} parameters, D_opt = {r['d_opt']:.4g} tokens, "
          f"{r['tokens_per_param']:.3g} tokens per parameter, predicted loss {loss}")
    return 0


def cmd_fit(args) -> int:
    if (args.runs is None) == (args.points is None):
        raise ConfigError("lineage scaling fit: give one of --runs DIR or --points FILE.csv")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap={args.bootstrap}: must be >= 0 (0: no intervals)")
    out = args.out or (args.runs if args.runs is not None else os.path.dirname(args.points) or ".")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out={out}: is a file; give a directory (it holds scaling.json and the PNGs)")
    from pathlib import Path

    from lineage_jax.runs import atomic
    from lineage_jax.scaling import plots, report
    if args.runs is not None:
        points, curves, unfinished = report.read_runs(args.runs)
    else:
        points, curves, unfinished = report.read_points_csv(args.points), [], []
    result = report.fit_all(points, curves, boot=args.bootstrap)
    if unfinished:
        result["unfinished_runs"] = unfinished
    result["figures"] = plots.draw_all(result, curves, Path(out))
    path = Path(out) / "scaling.json"
    atomic.write_text(path, json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
        return 0
    for line in report.summary(result):
        print(line)
    if unfinished:
        print(f"not used (unfinished): {', '.join(unfinished)}")
    print(f"wrote {path} and {', '.join(result['figures'])}")
    return 0
