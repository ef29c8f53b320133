"""``lineage``: train, sample, bench, shard-report, convert (+ the modules in ``lineage_jax.commands``). The only place that prints or exits.

Arguments and config are parsed and validated before JAX is imported, so ``--devices N``
can still emulate N CPU devices and a bad key costs no compile.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from lineage_jax.commands.devices import (add_distributed_args, init_devices, init_jax, refuse_several_processes,
                                          report_process_rows)
from lineage_jax.config import ConfigError, UserError, load_config
from lineage_jax.tokenize import get_tokenizer

DEFAULT_CONFIG = "tiny"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="YAML preset path or name in configs/ (default: tiny)")
    p.add_argument("--devices", type=int, default=None, help="emulate N CPU devices (before JAX starts)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.steps=200")


def cmd_train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    get_tokenizer(cfg.data.tokenizer)      # an unknown name or a broken tokenizer file: one line before JAX starts
    init_jax(args)
    from lineage_jax.train.loop import train
    if cfg.optim.warmup_steps > cfg.train.steps:
        print(f"note: optim.warmup_steps={cfg.optim.warmup_steps} is more than train.steps={cfg.train.steps}: "
              f"warming up over all {cfg.train.steps} steps", file=sys.stderr)
    summary = train(cfg, progress=not args.no_progress, sample_chars=0 if args.no_sample else 300,
                    overwrite=args.overwrite)
    report_process_rows(summary, cfg.train.batch_size)
    first, final = summary["first_loss"], summary["final_loss"]
    if first is None:   # a process other than 0 resumed a finished run: it logged no row
        print(f"done: {summary['steps']} steps (already trained); run files in {summary['run_dir']}")
        return 0
    print(f"done: {summary['steps']} steps, loss {first:.3f} -> {final:.3f}"
          + (f" ({100 * (1 - final / first):.0f}% lower)" if first else "")
          + (f", eval {summary['eval_loss']:.3f}" if summary["eval_loss"] is not None else "")
          + f"; metrics, checkpoints and loss.png in {summary['run_dir']}")
    if "sample" in summary:
        print("sample (temperature 0.8):\n" + summary["sample"])
    return 0


def _check_sample_args(args) -> list[str]:
    """Validate ``lineage sample`` flags before JAX loads (each value by ``decode.args``' rules); returns the prompts."""
    from lineage_jax.decode.args import SamplingError, check
    sampling = [f for f, v in (("--temperature", args.temperature), ("--top-k", args.top_k), ("--top-p", args.top_p))
                if v is not None]
    if args.strategy != "sample" and sampling:
        raise ConfigError(f"{', '.join(sampling)}: only with --strategy sample (not {args.strategy})")
    given = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p),
                               ("gamma", args.gamma)) if v is not None}
    try:
        check(max_new_tokens=args.max_new_tokens, strategy=args.strategy, num_beams=args.num_beams,
              batch_size=args.batch_size, block_size=args.block_size, num_samples=args.num_samples, **given)
    except SamplingError as e:
        raise ConfigError(e.as_flag()) from None
    if args.num_beams > 1 and args.strategy != "beam":
        raise ConfigError(f"--num-beams={args.num_beams}: only with --strategy beam")
    if args.num_samples > 1 and args.strategy != "sample":
        raise ConfigError(f"--num-samples={args.num_samples}: only with --strategy sample (not {args.strategy})")
    if args.gamma is not None and args.draft_run_dir is None:
        raise ConfigError(f"--gamma={args.gamma}: only with --draft-run-dir (speculative decoding)")
    if args.draft_run_dir is not None:
        if args.strategy == "beam":
            raise ConfigError("--draft-run-dir: speculative decoding is for --strategy greedy or sample, not beam")
        if args.num_samples > 1:
            raise ConfigError("--draft-run-dir with --num-samples: give one of them")
        draft_yaml = os.path.join(args.draft_run_dir, "config.yaml")
        if not os.path.isdir(args.draft_run_dir):
            raise ConfigError(f"--draft-run-dir={args.draft_run_dir}: no such directory")
        if not os.path.isfile(draft_yaml):
            raise ConfigError(f"--draft-run-dir={args.draft_run_dir}: no config.yaml there (not a run directory)")
        target_yaml = os.path.join(args.run_dir, "config.yaml")
        if os.path.isfile(target_yaml):   # a missing target run is reported by load_for_inference
            d, t = load_config(draft_yaml, []), load_config(target_yaml, [])
            if (d.model.vocab_size, d.data.tokenizer) != (t.model.vocab_size, t.data.tokenizer):
                raise ConfigError(f"--draft-run-dir={args.draft_run_dir}: vocabulary {d.model.vocab_size} "
                                  f"({d.data.tokenizer}) differs from the target's {t.model.vocab_size} "
                                  f"({t.data.tokenizer}); the draft must share the target's tokenizer")
    if args.prompts_file is not None:
        if args.prompt is not None:
            raise ConfigError("--prompt and --prompts-file: give one of them")
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise ConfigError(f"--prompts-file={args.prompts_file}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"--prompts-file={args.prompts_file}: not UTF-8 text ({e.reason} at byte {e.start}); "
                              f"save it as UTF-8") from None
        if not prompts:
            raise ConfigError(f"--prompts-file={args.prompts_file}: no prompts (one per line)")
        return prompts
    prompt = "\n" if args.prompt is None else args.prompt
    if not prompt:
        raise ConfigError("--prompt is empty: give at least one character to continue from")
    return [prompt]


def cmd_sample(args) -> int:
    prompts = _check_sample_args(args)
    init_devices(args.devices)
    from lineage_jax import decode
    temperature = 0.8 if args.temperature is None else args.temperature
    kw = dict(strategy=args.strategy, temperature=temperature, top_k=args.top_k or 0,
              top_p=1.0 if args.top_p is None else args.top_p, seed=args.seed)
    _, model, params, tokenizer = decode.load_for_inference(args.run_dir)
    many = len(prompts) > 1 and not args.no_progress
    if args.draft_run_dir is not None:                                  # speculative decoding
        _, d_model, d_params, _ = decode.load_for_inference(args.draft_run_dir)
        results = decode.speculative_prompts((model, params), (d_model, d_params), tokenizer, prompts,
                                             args.max_new_tokens, 4 if args.gamma is None else args.gamma,
                                             progress=many, **kw)
    elif (args.prompts_file is not None or args.num_samples > 1) and args.strategy != "beam":   # paged engine
        results = decode.serve_prompts(model, params, tokenizer, prompts, args.max_new_tokens, slots=args.batch_size,
                                       block_size=args.block_size, num_samples=args.num_samples,
                                       progress=not args.no_progress, **kw)
    elif len(prompts) == 1 and not args.json and args.strategy != "beam":   # stream one prompt's text
        print(prompts[0], end="", flush=True)
        decode.generate_text(model, params, tokenizer, prompts[0], args.max_new_tokens, seed=args.seed,
                             temperature=0.0 if args.strategy == "greedy" else temperature, top_k=kw["top_k"],
                             top_p=kw["top_p"], stream=lambda piece: print(piece, end="", flush=True))
        print()
        return 0
    else:
        results = decode.sample_prompts(model, params, tokenizer, prompts, args.max_new_tokens,
                                        num_beams=args.num_beams, batch_size=args.batch_size, progress=many, **kw)
    for r in results:
        print(json.dumps(r) if args.json else r["text"] + "\n")
    return 0


def _check_plot_out(out: str | None) -> None:
    """``bench --out``: refused in one line before any work unless it is a new or existing .png file whose
    directory exists (the plot is written only after minutes of measuring)."""
    if out is None:
        return
    if os.path.isdir(out):
        raise ConfigError(f"--out={out}: is a directory; give a .png file path (e.g. {os.path.join(out, 'plot.png')})")
    if not out.lower().endswith(".png"):
        raise ConfigError(f"--out={out}: the plot is a PNG; give a path ending in .png")
    parent = os.path.dirname(out) or "."
    if not os.path.isdir(parent):
        raise ConfigError(f"--out={out}: directory {parent} does not exist; create it or pick another path")


def cmd_bench(args) -> int:
    from lineage_jax.commands import BENCH_TARGETS
    if args.target is not None and "=" in args.target:   # argparse took the first override for a target
        args.overrides, args.target = [args.target, *args.overrides], None
    target = args.target or "train"
    if target not in BENCH_TARGETS:
        raise ConfigError(f"lineage bench {target}: unknown target; allowed: {', '.join(BENCH_TARGETS)}")
    _check_plot_out(args.out)
    if target == "train":
        cfg = load_config(args.config, args.overrides)
        init_devices(args.devices)
        from lineage_jax.bench import report, run_bench
        result = run_bench(cfg, steps=args.steps, torch_peer=not args.no_torch, depth_check=not args.no_depth)
        print(json.dumps(result, indent=1) if args.json else report(result))
        return 0
    import importlib
    init_devices(args.devices)
    mod = importlib.import_module(BENCH_TARGETS[target])
    result = mod.run(args)
    print(json.dumps(result, indent=1) if args.json else mod.report(result))
    return 0


def cmd_convert(args) -> int:
    if args.to_hf == (args.from_hf is not None):
        raise ConfigError("convert: give --from-hf DIR --run-dir OUT (Hugging Face -> run) or --to-hf --run-dir RUN "
                          "--out DIR (run -> Hugging Face)")
    if args.to_hf and args.out is None:
        raise ConfigError("convert --to-hf: --out DIR is required")
    init_devices(args.devices)
    if args.to_hf:   # any run directory (a LoRA fine-tune: base + adapters merged) -> config.json + model.safetensors
        from lineage_jax.decode import load_for_inference
        from lineage_jax.interop import hf
        _, model, params, _ = load_for_inference(args.run_dir)
        hf.save(model, params, args.out)
        print(f"converted {args.run_dir} -> {args.out} (config.json + model.safetensors)")
        return 0
    from lineage_jax.interop import convert_to_run_dir
    run_dir = convert_to_run_dir(args.from_hf, args.run_dir, tokenizer=args.tokenizer)
    print(f"converted {args.from_hf} -> {run_dir}; try: lineage sample --run-dir {run_dir}")
    return 0


def cmd_shard_report(args) -> int:
    cfg = load_config(args.config, args.overrides)
    init_devices(args.devices)
    from pathlib import Path

    from lineage_jax.commands import shard_report as sr
    from parallel.report.format import fmt_bytes, format_report
    if args.compare:
        rows = sr.compare(cfg, Path(args.compare))
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            for r in rows:
                print(f"{r['name']:<13} " + (f"skipped: {r['skipped']}" if "skipped" in r else
                      f"params {fmt_bytes(r['params'])}, opt {fmt_bytes(r['opt_state'])}, "
                      f"temp {fmt_bytes(r['temp'])}, sent {fmt_bytes(r['comm'])} "
                      f"(theory {fmt_bytes(r['comm_theory'])})"))
            print(f"plot: {args.compare}")
        return 0
    rep = sr.shard_report(cfg, processes=args.processes)
    print(json.dumps(sr.to_json(rep), indent=1) if args.json else format_report(rep))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineage", description="lineage_jax: the LLM lineage in pure JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or resume) a model; no arguments: the embedded tiny default")
    _add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-sample", action="store_true", help="skip the sample printed after training")
    p.add_argument("--overwrite", action="store_true",
                   help="start run_dir afresh: clear the run's own files there (config, metrics, checkpoints), "
                        "keep any others")
    add_distributed_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from the latest checkpoint of a run")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--prompts-file", default=None, metavar="F",
                   help="one prompt per line, served by continuous batching over a paged KV cache (beam: one by one)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--strategy", choices=("greedy", "sample", "beam"), default="sample")
    p.add_argument("--temperature", type=float, default=None, help="sample only (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only: keep the k most probable tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="sample only: nucleus mass in (0, 1] (1 = off)")
    p.add_argument("--num-beams", type=int, default=1, help="beam only: beam width")
    p.add_argument("--batch-size", type=int, default=8,
                   help="prompts decoded together (with --prompts-file: decode slots of the paged engine)")
    p.add_argument("--block-size", type=int, default=16, help="paged KV cache: token slots per block")
    p.add_argument("--num-samples", type=int, default=1,
                   help="sample only: samples per prompt, sharing the prompt's KV blocks (copy-on-write)")
    p.add_argument("--draft-run-dir", default=None, metavar="D",
                   help="speculative decoding with this run as the draft (same tokenizer as --run-dir)")
    p.add_argument("--gamma", type=int, default=None, metavar="N",
                   help="with --draft-run-dir: draft tokens proposed per target call (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar over --prompts-file")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of streaming text (text, tokens, "
                        "new_tokens, prompt_tokens, prompt_tokens_kept, stop_reason: eos|max_new_tokens|context)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="benchmarks: train (default: tokens/s, FLOPs, MFU, compile times of the "
                                      "train step) or another target")
    p.add_argument("target", nargs="?", default=None,
                   help="what to measure: train (default), or another target listed in lineage_jax/commands")
    _add_config_args(p)
    p.set_defaults(config="bench")
    p.add_argument("--steps", type=int, default=20, help="timed steps per round (median reported)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager peer")
    p.add_argument("--no-depth", action="store_true", help="skip the 2-vs-12-layer compile-time check")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, metavar="PATH", help="where a target writes its plot (PNG)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, e.g. in tests)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("shard-report", help="compile the train step under a strategy; show memory and collectives")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--compare", metavar="PNG", help="report every strategy for this model and plot them to PNG")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="add the per-process view as if the devices were N equal processes: bytes each holds, "
                        "collectives inside a process (ICI) vs across processes (DCN); always on in a multi-process run")
    p.set_defaults(func=cmd_shard_report)

    p = sub.add_parser("convert", help="a Hugging Face checkpoint directory -> a lineage run directory, or back "
                                        "(--to-hf)")
    p.add_argument("--from-hf", default=None, metavar="DIR", help="config.json + model.safetensors")
    p.add_argument("--to-hf", action="store_true", help="the other way: --run-dir RUN -> --out DIR (GPT-2 / Llama)")
    p.add_argument("--out", default=None, metavar="DIR", help="with --to-hf: the Hugging Face directory to write")
    p.add_argument("--run-dir", required=True, metavar="OUT",
                   help="new run directory (must hold no checkpoint); with --to-hf the run to export")
    p.add_argument("--tokenizer", default=None,
                   help="data.tokenizer for the run (default: DIR's tokenizer.json, else byte)")
    p.add_argument("--devices", type=int, default=None)
    p.set_defaults(func=cmd_convert)

    import importlib

    from lineage_jax.commands import COMMANDS
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parse_args``, but ``section.key=value`` overrides may also follow flags
    (``lineage train train.steps=2 --no-progress run_dir=x``): argparse stops a ``nargs="*"``
    positional at the first flag, so the later ones are collected here, in order."""
    args, extra = parser.parse_known_args(argv)
    late = [e for e in extra if hasattr(args, "overrides") and "=" in e and not e.startswith("-")]
    stray = [e for e in extra if e not in late]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if late:
        args.overrides = [*args.overrides, *late]
    return args


def _leave(code: int) -> int:
    """``code``; but a failing process of a multi-process run leaves at once (``os._exit``) instead of
    waiting at JAX's shutdown barrier for processes still in their next collective, which would hang
    them all for the shutdown timeout (5 min); its silence stops them within the heartbeat timeout."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _command_name(args) -> str:
    """``train``, ``align dpo``, ``scaling sweep``: the command and its subcommand, as typed."""
    sub = getattr(args, f"{args.command}_command", None) or getattr(args, "stage", None)
    return f"{args.command} {sub}" if sub else args.command


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    if getattr(args, "steps", 1) < 1:
        print(f"error: --steps={args.steps}: must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.command != "launch":      # a one-process command started as one of several: one line, no JAX
            refuse_several_processes(args, _command_name(args))
        return args.func(args)
    except UserError as e:   # one line for what a user can fix; a bug stays a traceback
        print(f"error: {e}", file=sys.stderr)
        return _leave(2)
    except Exception as e:
        from parallel import MeshError   # parallel/'s own kind (it knows nothing of lineage_jax); imported
        if isinstance(e, MeshError):     # only here, since parallel/ imports JAX and listings must not
            print(f"error: {e}", file=sys.stderr)
            return _leave(2)
        if "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized():
            import traceback
            traceback.print_exc()
            _leave(1)
        raise
    except KeyboardInterrupt:
        return _leave(130)


if __name__ == "__main__":
    sys.exit(main())
