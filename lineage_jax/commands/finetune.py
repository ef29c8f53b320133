"""``lineage finetune``: LoRA / QLoRA fine-tuning of a run directory or a Hugging Face checkpoint, and
what to do with the result.

    lineage finetune --from RUN_OR_HF_DIR --run-dir OUT [--lora-rank 8] [--lora-alpha 16]
                     [--lora-targets q,k,v,o,mlp] [--quant none|nf4|int8] [--offload-opt-state]
                     [section.key=value ...]
    lineage finetune merge --run-dir OUT --out MERGED        a run directory with W + ΔW
    lineage finetune export-peft --run-dir OUT --out DIR     adapter_config.json + adapter_model.safetensors

OUT is an ordinary run directory (config.yaml: the base's model; checkpoints: the adapters and their
optimiser state; rerunning the same command resumes) plus ``adapter.json`` (``adapt.store``); a Hugging
Face source is converted into ``OUT/base`` first. ``lineage sample --run-dir OUT`` samples base + adapters.
The config is the base run's (its mesh reset to data parallel over this run's devices), with ``section.key=value`` overrides (``train.steps``, ``optim.lr``,
``data.text_files=...``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from lineage_jax.commands.devices import (add_distributed_args, asked_for_several, init_devices, init_jax, refusal,
                                          report_process_rows)
from lineage_jax.config import ConfigError

ACTIONS = ("merge", "export-peft")


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="LoRA / QLoRA fine-tuning of a run or a Hugging Face checkpoint; "
                                               "'merge' and 'export-peft' its result")
    p.add_argument("rest", nargs="*", metavar="[merge|export-peft] section.key=value",
                   help="an action (merge, export-peft) or config overrides, e.g. train.steps=200")
    p.add_argument("--from", dest="source", default=None, metavar="RUN_OR_HF_DIR",
                   help="the base: a run directory, or a Hugging Face checkpoint (config.json + model.safetensors)")
    p.add_argument("--run-dir", required=True, metavar="OUT", help="the fine-tuning run directory")
    p.add_argument("--out", default=None, metavar="DIR", help="merge / export-peft: where to write")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default="q,k,v,o,mlp", help="comma list of q, k, v, o, mlp")
    p.add_argument("--quant", default="none", help="the frozen base's adapted kernels: none, nf4 (QLoRA), int8")
    p.add_argument("--lora-mode", default="onthefly",
                   help="the adapted forward in the step: onthefly (x·W + (x·A)·B·α/r at each layer, no merged kernel; "
                        "default) or merged (W + ΔW per kernel; more temporaries)")
    p.add_argument("--offload-opt-state", action="store_true",
                   help="keep the Adam moments in host memory (pinned_host) between steps (QLoRA's paged optimiser; "
                        "on CPU host and device memory are the same RAM, so nothing is saved there)")
    p.add_argument("--tokenizer", default=None, help="Hugging Face source: data.tokenizer (default: its "
                                                     "tokenizer.json, else byte)")
    p.add_argument("--overwrite", action="store_true", help="start OUT afresh (its own files only)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--devices", type=int, default=None, help="emulate N CPU devices (before JAX starts)")
    add_distributed_args(p)
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    action = args.rest[0] if args.rest and "=" not in args.rest[0] else None
    if action is not None and action not in ACTIONS:
        raise ConfigError(f"finetune '{action}': allowed actions {', '.join(ACTIONS)} (or section.key=value "
                          f"overrides)")
    overrides = args.rest[1:] if action else args.rest
    if action:
        if args.out is None:
            raise ConfigError(f"finetune {action}: --out DIR is required")
        if overrides:
            raise ConfigError(f"finetune {action}: takes no overrides (got {overrides[0]})")
        if asked_for_several(args):   # one directory written from one process
            raise ConfigError(refusal(f"finetune {action}"))
        init_devices(args.devices)
        return merge(args) if action == "merge" else export_peft(args)
    if args.source is None:
        raise ConfigError("finetune: --from RUN_OR_HF_DIR is required (or an action: merge, export-peft)")
    return run(args, overrides)


def _source_kind(src: Path) -> str:
    if (src / "config.yaml").is_file():
        return "run"
    if (src / "config.json").is_file():
        return "hf"
    raise ConfigError(f"--from {src}: neither a run directory (config.yaml) nor a Hugging Face checkpoint "
                      f"(config.json)")


def run(args, overrides) -> int:
    from lineage_jax.adapt import lora, store
    lcfg = lora.LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=lora.parse_targets(args.lora_targets))
    if args.quant not in store.QUANT:
        raise ConfigError(f"--quant={args.quant}: allowed {', '.join(store.QUANT)}")
    if args.lora_mode not in ("onthefly", "merged"):
        raise ConfigError(f"--lora-mode={args.lora_mode}: allowed onthefly, merged")
    src, out = Path(args.source).resolve(), Path(args.run_dir)
    kind = _source_kind(src)
    if out.resolve() == src:
        raise ConfigError(f"--run-dir {out}: is the base itself; give a new directory")
    if store.is_adapted(out) and not args.overwrite:
        old = store.read(out)
        want = (lcfg, args.quant)
        if (old.lora, old.quant) != want:
            raise ConfigError(f"--run-dir {out}: holds a fine-tune with rank {old.lora.rank}, alpha {old.lora.alpha}, "
                              f"targets {','.join(old.lora.targets)}, quant {old.quant}; rerun with those to resume, "
                              f"or --overwrite")
    if kind == "hf" and asked_for_several(args) and (args.overwrite or not (out / "base" / "config.yaml").is_file()):
        raise ConfigError(f"finetune --from {src}: across processes the base must be a run directory (converting a "
                          f"Hugging Face checkpoint writes it from one process, and Orbax's save is a collective "
                          f"of all); convert it first: lineage convert --from-hf {src} --run-dir BASE, then --from BASE")
    init_jax(args)   # one of several processes (--coordinator / lineage launch local): the runtime, before JAX
    from lineage_jax.config import load_config
    from lineage_jax.decode import generate_text, load_for_inference
    from lineage_jax.train.finetune import build_finetune, compile_finetune
    from lineage_jax.train.loop import train

    base_dir, base_ref, hf_source = _prepare(args, src, out, kind)
    fresh_mesh = ["mesh.data=-1", "mesh.fsdp=1", "mesh.expert=1", "mesh.tensor=1"]   # this run's devices, not the base's
    cfg = load_config(str(base_dir / "config.yaml"), [*fresh_mesh, *overrides, f"run_dir={out}"])
    _, model, params, tokenizer = load_for_inference(base_dir)
    rec = store.Record(lcfg, base_ref, args.quant, hf_source)

    def builder(c):
        ft = build_finetune(c, lcfg, params, quant_kind=args.quant, offload_opt_state=args.offload_opt_state,
                            mode=args.lora_mode)
        return ft.setup, lambda _: compile_finetune(ft)

    summary = train(cfg, progress=not args.no_progress, overwrite=False, builder=builder,
                    files={store.ADAPTER_JSON: rec.to_json()})
    first, final = summary["first_loss"], summary["final_loss"]
    from lineage_jax.adapt.lora import count
    from lineage_jax.decode.load import load_adapted
    _, _, merged, _, adapters, _ = load_adapted(out)   # every process: the restore's verdict is collective
    n = report_process_rows(summary, cfg.train.batch_size)
    losses = "already trained" if first is None else f"loss {first:.3f} -> {final:.3f}"
    print(f"done: {summary['steps']} steps, {losses}"
          + (f", eval {summary['eval_loss']:.3f}" if summary["eval_loss"] is not None else "")
          + f"; trained {count(adapters):,} adapter parameters ({100 * count(adapters) / count(params):.2f}% of "
          f"{count(params):,}); run files in {out}")
    if not args.no_progress and n == 1:   # sampling is a single-process program (as after lineage train)
        print("sample (temperature 0.8):\n" + generate_text(model, merged, tokenizer, "def ", 200, temperature=0.8),
              file=sys.stdout)
    return 0


def _prepare(args, src: Path, out: Path, kind: str) -> tuple[Path, str, str | None]:
    """(base_dir, base_ref, hf_source): ``--overwrite`` clears OUT's own files and a Hugging Face source is
    converted into ``OUT/base`` (one process only: ``run`` refuses a conversion across processes). Several
    processes: process 0 clears and tells the others whether it succeeded (they wait for it; a failure
    ends each of them in one line, its log says why)."""
    from lineage_jax.runs import lock, rundir
    from parallel.distributed import verdict_of_process_0
    hf = kind == "hf"
    base_dir, base_ref = (out / "base", "base") if hf else (src, str(src))
    import jax
    if jax.process_index() == 0:
        try:
            if args.overwrite and out.is_dir():
                with lock.hold(out):
                    rundir.clear(out)
            if hf and not (base_dir / "config.yaml").is_file():
                from lineage_jax.interop import convert_to_run_dir
                out.mkdir(parents=True, exist_ok=True)
                convert_to_run_dir(src, base_dir, tokenizer=args.tokenizer)
        except BaseException:
            verdict_of_process_0(False)
            raise
        verdict_of_process_0(True)
    elif not verdict_of_process_0(True):
        raise ConfigError(f"finetune --run-dir {out}: process 0 could not prepare it (its log says why)")
    return base_dir, base_ref, (str(src) if hf else None)


def merge(args) -> int:
    """OUT (base + adapters) -> a plain run directory with the merged weights."""
    from lineage_jax.decode.load import load_adapted
    from lineage_jax.interop.hf import params_to_run_dir
    out = Path(args.run_dir)
    if not (out / "adapter.json").is_file():
        raise ConfigError(f"--run-dir {out}: not a fine-tuning run (no adapter.json)")
    cfg, model, params, _, _, rec = load_adapted(out)
    params_to_run_dir(model.cfg, cfg.data.tokenizer, params, args.out, source=f"{out.resolve()} (merged)")
    note = f" (its base {rec.quant}-quantised, as trained)" if rec.quant != "none" else ""
    print(f"merged {out} -> {args.out}{note}; try: lineage sample --run-dir {args.out}")
    return 0


def export_peft(args) -> int:
    """OUT's adapters in peft's format, for the Hugging Face model of its base."""
    from lineage_jax.decode.load import load_adapted
    from lineage_jax.interop import peft
    out = Path(args.run_dir)
    if not (out / "adapter.json").is_file():
        raise ConfigError(f"--run-dir {out}: not a fine-tuning run (no adapter.json)")
    _, model, _, _, adapters, rec = load_adapted(out)
    if rec.quant != "none":
        print(f"note: {out} was trained over a {rec.quant} base; peft applies the adapters to the full-precision "
              f"model", file=sys.stderr)
    peft.save(model, adapters, rec.lora, args.out, base_model=rec.hf_source)
    base = rec.hf_source or f"lineage convert --to-hf --run-dir {rec.base_dir(out)} --out HF_DIR"
    print(f"wrote {args.out}/adapter_config.json and adapter_model.safetensors; base model: {base}")
    return 0
