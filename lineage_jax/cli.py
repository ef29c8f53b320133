"""``lineage``: train, sample, bench, shard-report. The only place that prints or exits.

Arguments and config are parsed and validated before JAX is imported, so ``--devices N``
can still emulate N CPU devices and a bad key costs no compile.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from lineage_jax.config import ConfigError, load_config

DEFAULT_CONFIG = "tiny"


def _init_devices(n: int | None) -> None:
    """Emulate ``n`` CPU devices; must run before JAX initialises its backends."""
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"--devices={n}: must be a positive integer")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    import jax
    jax.config.update("jax_num_cpu_devices", n)
    if jax.default_backend() == "cpu" and jax.device_count() != n:
        raise ConfigError(f"--devices={n}: JAX already initialised with {jax.device_count()} devices")


def _user_errors():
    from lineage_jax.train.checkpoint import CheckpointError
    from lineage_jax.train.loop import RunDirError
    from parallel import MeshError
    return ConfigError, MeshError, RunDirError, CheckpointError, FileNotFoundError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML preset path or name in configs/ (default: tiny)")
    p.add_argument("--devices", type=int, default=None, help="emulate N CPU devices (before JAX starts)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.steps=200")


def cmd_train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    _init_devices(args.devices)
    from lineage_jax.train.loop import train
    summary = train(cfg, progress=not args.no_progress, sample_chars=0 if args.no_sample else 300)
    first, final = summary["first_loss"], summary["final_loss"]
    print(f"done: {summary['steps']} steps, loss {first:.3f} -> {final:.3f}"
          + (f" ({100 * (1 - final / first):.0f}% lower)" if first else "")
          + (f", eval {summary['eval_loss']:.3f}" if summary["eval_loss"] is not None else "")
          + f"; metrics, checkpoints and loss.png in {summary['run_dir']}")
    if "sample" in summary:
        print("sample (temperature 0.8):\n" + summary["sample"])
    return 0


def cmd_sample(args) -> int:
    if args.temperature < 0:
        raise ConfigError(f"--temperature={args.temperature}: must be >= 0 (0 = greedy)")
    if not args.prompt:
        raise ConfigError("--prompt is empty: give at least one character to continue from")
    _init_devices(args.devices)
    from lineage_jax.sample import sample_run
    temperature = 0.0 if args.strategy == "greedy" else args.temperature
    stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
    if stream:
        print(args.prompt, end="", flush=True)
    text = sample_run(args.run_dir, args.prompt, args.max_new_tokens, temperature=temperature, seed=args.seed,
                      stream=stream)
    print(json.dumps({"prompt": args.prompt, "text": text}) if args.json else "")
    return 0


def cmd_bench(args) -> int:
    cfg = load_config(args.config, args.overrides)
    _init_devices(args.devices)
    from lineage_jax.bench import report, run_bench
    result = run_bench(cfg, steps=args.steps, torch_peer=not args.no_torch, depth_check=not args.no_depth)
    print(json.dumps(result, indent=1) if args.json else report(result))
    return 0


def cmd_shard_report(args) -> int:
    cfg = load_config(args.config, args.overrides)
    _init_devices(args.devices)
    from pathlib import Path

    from lineage_jax import shard_report as sr
    from parallel import introspect
    if args.compare:
        rows = sr.compare(cfg, Path(args.compare))
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            for r in rows:
                print(f"{r['name']:<10} " + (f"skipped: {r['skipped']}" if "skipped" in r else
                      f"params {introspect.fmt_bytes(r['params'])}, opt {introspect.fmt_bytes(r['opt_state'])}, "
                      f"temp {introspect.fmt_bytes(r['temp'])}, sent {introspect.fmt_bytes(r['comm'])} "
                      f"(theory {introspect.fmt_bytes(r['comm_theory'])})"))
            print(f"plot: {args.compare}")
        return 0
    rep = sr.shard_report(cfg)
    print(json.dumps(sr.to_json(rep), indent=1) if args.json else introspect.format_report(rep))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineage", description="lineage_jax: the LLM lineage in pure JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) a model; no arguments: the embedded tiny default")
    _add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-sample", action="store_true", help="skip the sample printed after training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from the latest checkpoint of a run")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--strategy", choices=("greedy", "sample"), default="sample")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="tokens/s, FLOPs, MFU and compile times of the train step")
    _add_config_args(p)
    p.set_defaults(config="bench")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round (median reported)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager peer")
    p.add_argument("--no-depth", action="store_true", help="skip the 2-vs-12-layer compile-time check")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("shard-report", help="compile the train step under a strategy; show memory and collectives")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--compare", metavar="PNG", help="report every strategy for this model and plot them to PNG")
    p.set_defaults(func=cmd_shard_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("max_new_tokens", "steps"):
        if getattr(args, flag, 1) < 1:
            print(f"error: --{flag.replace('_', '-')}={getattr(args, flag)}: must be at least 1", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line for the errors a user can fix; a traceback for bugs
        if isinstance(e, _user_errors()):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
