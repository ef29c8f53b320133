"""``lineage align sft|rm|dpo|ppo|judge``: the alignment stages over a pretrained run (``lineage_jax/align/``).

    lineage align sft --from RUN --run-dir OUT [key=value ...]
    lineage align rm  --from RUN --run-dir OUT
    lineage align dpo --from SFT_RUN [--reference RUN] --run-dir OUT [align.beta=0.1 align.loss=ipo]
    lineage align ppo --policy SFT_RUN --reward RM_RUN [--reference RUN] --run-dir OUT [align.kl_coef=0.05]
    lineage align grpo --from RUN --run-dir OUT [grpo.group=4 grpo.digits=1 grpo.loss_type=dr_grpo ...]
    lineage align judge --from SFT_RUN --run-dir JUDGE           (Constitutional AI's feedback model)
    lineage align sft|rm|dpo ... --judge JUDGE                   (AI feedback: SL-CAI revisions / RLAIF labels)

``align.*`` keys set the stage (``lineage_jax/align/config.py``); any other key=value overrides the
source run's config (train.steps, train.batch_size, optim.lr, mesh.*, parallel.*). Sources, keys and
values are checked before JAX starts; rerunning a command resumes its run directory.
"""
from __future__ import annotations

import json
import os

from lineage_jax.commands.devices import init_devices
from lineage_jax.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("align", help="alignment: SFT, reward model, PPO (InstructGPT), DPO, Constitutional AI "
                              "over a trained run")
    sub = p.add_subparsers(dest="stage", required=True)
    for stage, text in (("sft", "supervised fine-tuning on demonstrations (loss on response tokens)"),
                        ("rm", "a Bradley-Terry reward model on comparison pairs"),
                        ("dpo", "direct preference optimisation against a frozen reference"),
                        ("ppo", "PPO on the reward model's score with a per-token KL penalty to the reference"),
                        ("grpo", "GRPO on arithmetic with a verifier's reward (lineage_jax/align/grpo_stage.py)"),
                        ("judge", "Constitutional AI's feedback model: one head per principle of the written "
                                  "constitution, trained on its worked examples only")):
        q = sub.add_parser(stage, help=text)
        if stage == "ppo":
            q.add_argument("--policy", required=True, metavar="RUN", help="the SFT run to start from (also the reference)")
            q.add_argument("--reward", required=True, metavar="RUN", help="a `lineage align rm` run")
        else:
            q.add_argument("--from", dest="source", required=True, metavar="RUN", help="the run to start from")
        if stage in ("dpo", "ppo"):
            q.add_argument("--reference", default=None, metavar="RUN", help="frozen reference (default: the start run)")
        if stage in ("sft", "rm", "dpo"):
            q.add_argument("--judge", default=None, metavar="RUN", help="a `lineage align judge` run: AI feedback "
                           "instead of human data (sft: SL-CAI revisions of the start run's own samples; rm, dpo: "
                           "the pairs ordered by the judge)")
        q.add_argument("--run-dir", required=True, metavar="OUT", help="the new (or resumed) run directory")
        q.add_argument("--devices", type=int, default=None, help="emulate N CPU devices (before JAX starts)")
        q.add_argument("--overwrite", action="store_true", help="start OUT afresh (clears only the run's own files)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")
        q.add_argument("overrides", nargs="*", metavar="key=value", help="align.* settings or config overrides")
        q.set_defaults(func=cmd_align)


def _sources(args) -> dict:
    src = {"policy": args.policy, "reward": args.reward} if args.stage == "ppo" else {"from": args.source}
    for name in ("reference", "judge"):
        if getattr(args, name, None):
            src[name] = getattr(args, name)
    for flag, path in src.items():
        if not os.path.isfile(os.path.join(path, "config.yaml")):
            raise ConfigError(f"--{flag}={path}: not a run directory (no config.yaml); give a trained run")
    return src


def cmd_align(args) -> int:
    if args.stage == "grpo":
        return _cmd_grpo(args)
    from lineage_jax.align.config import AlignConfig, check, split_overrides
    sources = _sources(args)
    values, _ = split_overrides(args.overrides)
    check(args.stage, AlignConfig(**values), 1 << 30)   # the context is checked against the model later
    init_devices(args.devices)
    from lineage_jax.align.run import run
    summary = run(args.stage, sources, args.run_dir, args.overrides, progress=not args.no_progress,
                  overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary))
        return 0
    f = summary["final"]
    if summary.get("feedback"):
        print("AI feedback: " + ", ".join(f"{k} {v:.3g}" for k, v in summary["feedback"].items()))
    if args.stage == "judge":
        print(f"done: {summary['steps']} steps; held-out verdicts: "
              + ", ".join(f"{k.removeprefix('verdict_')} {v:.2f}" for k, v in f.items() if k.startswith("verdict_"))
              + f"; agreement with gold: AI labels {f['ai_agreement']:.3f}, human labels {f['human_agreement']:.3f}")
    elif args.stage == "rm":
        print(f"done: {summary['steps']} steps; held-out pairs: accuracy {f['accuracy']:.3f}, loss {f['loss']:.3f}")
    else:
        print(f"done: {summary['steps']} {'iterations' if args.stage == 'ppo' else 'steps'}; held-out prompts: "
              f"gold {f['gold']:.3f}, correct {f['correct']:.2f}, rude {f['rude']:.2f}, KL to reference {f['kl']:.2f} nats")
        for p, r in f["examples"]:
            print(f"  {p}{r}")
    print(f"run files in {summary['run_dir']}")
    return 0


def _cmd_grpo(args) -> int:
    from lineage_jax.align.grpo_stage import GrpoConfig, check, split_overrides
    sources = _sources(args)
    values, _ = split_overrides(args.overrides)
    check(GrpoConfig(**values))
    init_devices(args.devices)
    from lineage_jax.align.grpo_stage import run
    summary = run(sources["from"], args.run_dir, args.overrides, progress=not args.no_progress,
                  overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary))
        return 0
    b, f = summary["before"], summary["final"]
    print(f"done: {summary['steps']} iterations; held-out greedy accuracy {b['accuracy']:.3f} -> {f['accuracy']:.3f}, "
          f"format {b['formatted']:.2f} -> {f['formatted']:.2f}, length {b['length']:.1f} -> {f['length']:.1f}")
    for p, r in f["examples"]:
        print(f"  {p}{r}")
    print(f"run files in {summary['run_dir']}")
    return 0
