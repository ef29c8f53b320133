"""``lineage plan``: which mesh, how many microbatches, what remat, and what it costs, for a model on
a cluster of real chips — from the formulas of ``parallel/plan/``, ranked by a roofline.

``lineage plan --verify [overrides]`` checks those formulas against this machine: it compiles the
configured step (``lineage shard-report``) and prints the planner's per-device parameter and
optimizer bytes and bytes per collective kind beside what the compiled program holds and sends.
"""
from __future__ import annotations

import json

from lineage_jax.commands.devices import init_devices
from lineage_jax.config import ConfigError, load_config

CHIP_NAMES = ("v4", "v5e", "v5p", "v6e", "h100", "a100")


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="rank meshes × microbatches × remat for a model on a cluster "
                                           "(roofline; --verify: formulas vs this machine's compiled step)")
    p.add_argument("--params", type=float, default=None, help="model size (e.g. 7e9) when no shape is given")
    p.add_argument("--arch", default="llama", choices=("llama", "gpt2"))
    for name in ("layers", "width", "heads", "kv-heads", "ffn", "vocab"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--config", default=None, help="take the shape from a config's model section (preset or YAML)")
    p.add_argument("--chips", type=int, default=None)
    p.add_argument("--chip", default="v5p", choices=CHIP_NAMES)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--global-batch", type=int, default=1024, help="sequences per step")
    p.add_argument("--param-bytes", type=int, default=4, help="bytes per stored parameter (4: f32 master weights)")
    p.add_argument("--opt-bytes", type=int, default=8, help="optimizer bytes per parameter (Adam: 8)")
    p.add_argument("--schedule", default="1f1b", choices=("1f1b", "gpipe"))
    p.add_argument("--remat", default=None, choices=("none", "dots", "full"), help="only this remat policy "
                   "(default: all three)")
    p.add_argument("--no-fsdp", action="store_true", help="leave ZeRO-3 meshes out (Megatron-LM's 3D search: "
                   "tensor × pipeline × data)")
    p.add_argument("--overlap", default="full", choices=("full", "none"),
                   help="step time reported and ranked by: full = compute, HBM and communication overlap (the "
                        "roofline's max), none = they add up (the sum); both bounds are in --json")
    p.add_argument("--top", type=int, default=10, help="plans shown (text)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="compare the formulas with this machine's compiled step")
    p.add_argument("--devices", type=int, default=None, help="--verify: emulate N CPU devices")
    p.add_argument("overrides", nargs="*", help="--verify: section.key=value config overrides")
    p.set_defaults(func=cmd_plan)


def shape_from_args(args):
    from parallel.plan import Shape, shape_for_params
    if args.config:
        m = load_config(args.config, []).model
        return Shape("llama" if m.arch == "llama" else "gpt2", m.layers, m.width, m.heads, m.kv_heads, m.mlp_dim,
                     m.vocab_size, args.seq)
    given = {k: getattr(args, k.replace("-", "_")) for k in ("layers", "width", "heads", "kv-heads", "ffn", "vocab")}
    if given["layers"] and given["width"]:
        return Shape(args.arch, given["layers"], given["width"], given["heads"] or given["width"] // 128,
                     given["kv-heads"] or 0, given["ffn"] or 0, given["vocab"] or 32000, args.seq)
    if args.params is None or args.params <= 0:
        raise ConfigError("lineage plan: give --params N (e.g. 7e9), or --layers and --width, or --config")
    return shape_for_params(args.params, args.arch, given["vocab"] or 32000, args.seq)


def cmd_plan(args) -> int:
    if args.verify:
        return cmd_verify(args)
    from parallel.plan import CHIPS, plan
    if not args.chips or args.chips < 1:
        raise ConfigError("lineage plan: --chips must be a positive number of chips")
    s = shape_from_args(args)
    out = plan(s, CHIPS[args.chip], args.chips, args.global_batch, param_bytes=args.param_bytes,
               grad_bytes=args.param_bytes, opt_bytes=args.opt_bytes, schedule=args.schedule, overlap=args.overlap,
               fsdp=not args.no_fsdp, **({"remats": (args.remat,)} if args.remat else {}))
    if args.json:
        print(json.dumps(out, indent=1, default=float))
        return 0
    print(format_plans(out, args.top))
    return 0


def format_plans(out: dict, top: int = 10) -> str:
    a = out["assumptions"]
    lines = [f"{a['params'] / 1e9:.2f}B parameters ({a['shape']['arch']}, {a['shape']['layers']} layers × "
             f"{a['shape']['width']}) on {a['chips']} × {a['chip']}, {a['global_batch']} × {a['shape']['seq']} tokens "
             f"per step", f"chip figures: {a['source']}", f"step time: {a['overlap']}", ""]
    if not out["plans"]:
        lines.append("no plan fits; first reasons:")
    for i, p in enumerate(out["plans"][:top]):
        b = p["step_time_bounds_s"]
        mesh = " ".join(f"{k}={v}" for k, v in p["mesh"].items() if v > 1) or "one chip"
        lines.append(f"{i + 1:>2}. {mesh:<34} M={p['microbatches']:<3} remat={p['remat']:<5} "
                     f"{p['memory_per_chip_bytes'] / 2**30:6.1f} GiB  {p['step_time_s']:8.3f} s  "
                     f"MFU {p['mfu']:.0%} (bounds {b['full_overlap']:.3g}-{b['no_overlap']:.3g} s)  {p['reason']}")
    reasons = sorted({r["reason"].split(";")[0] if "needs" not in r["reason"] else "too large for the chip"
                      for r in out["rejected"]})
    lines += ["", f"rejected: {len(out['rejected'])} ({'; '.join(reasons[:4])})"]
    return "\n".join(lines)


def predict_vs_compiled(cfg, devices=None) -> list[dict]:
    """The planner's per-device bytes beside the compiled step's (``shard_report``): parameters,
    optimizer state, and bytes sent per collective kind; one row each, with the relative error."""
    import jax.numpy as jnp

    from lineage_jax.commands.shard_report import shard_report
    from lineage_jax.models.gpt import padded_vocab
    from parallel.plan import Shape, collective_bytes, per_chip_params
    from parallel.plan.cost import _split

    rep = shard_report(cfg, devices)
    m, p = cfg.model, cfg.parallel
    mesh = {k: int(v) for k, v in rep["mesh"].items()}
    mesh.setdefault("stage", 1)
    s = Shape("gpt2", m.layers, m.width, m.heads, 0, 0, padded_vocab(m), m.context)
    M = p.microbatches if p.pipeline_stages > 1 else 1
    rows = cfg.train.batch_size // (mesh["data"] * mesh["fsdp"] * mesh.get("expert", 1) * M)
    b = jnp.dtype(m.param_dtype).itemsize
    predicted = {"params": per_chip_params(s, mesh, p.zero_stage) * b,
                 "opt_state": _split(s, mesh, p.zero_stage >= 1) * 2 * b}
    comm = collective_bytes(s, mesh, zero=p.zero_stage, microbatches=M, rows=rows, param_bytes=b, grad_bytes=b,
                            act_bytes=jnp.dtype(m.dtype).itemsize, remat=m.remat)
    if p.pipeline_stages > 1:   # the executor permutes both rings every tick, busy or idle
        comm["collective-permute"] = rep["pipeline"]["permute_bytes_per_device"]
    measured = {"params": rep["params_bytes_per_device"], "opt_state": rep["opt_state_bytes_per_device"]}
    executed = {c["kind"]: c["sent_bytes"] for c in rep.get("collectives_executed", ())}
    if p.pipeline_stages > 1:   # the tick loop's branches as the schedule runs them, averaged over devices
        executed = rep["pipeline"]["executed_sent_bytes"]
    out = []
    for k in ("params", "opt_state"):
        out.append(_row(k, predicted[k], measured[k]))
    for k in ("all-reduce", "all-gather", "reduce-scatter", "collective-permute"):
        if comm[k] or executed.get(k):
            out.append(_row(k, comm[k], executed.get(k, 0)))
    return out


def _row(name, predicted, measured) -> dict:
    err = abs(predicted - measured) / measured if measured else (0.0 if not predicted else float("inf"))
    return {"quantity": name, "predicted": float(predicted), "measured": float(measured), "rel_err": err}


def cmd_verify(args) -> int:
    cfg = load_config(args.config or "tiny", args.overrides)
    init_devices(args.devices)
    rows = predict_vs_compiled(cfg)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(f"{r['quantity']:<20} predicted {r['predicted']:>14,.0f} B   compiled {r['measured']:>14,.0f} B   "
              f"error {r['rel_err']:.1%}")
    return 0
