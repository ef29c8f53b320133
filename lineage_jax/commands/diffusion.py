"""``lineage diffusion schedule | train | sample``: noise schedules, and class-conditional DDPMs on the digits.

    lineage diffusion schedule [--schedule linear|cosine] [--timesteps T] [--json]
    lineage diffusion train --run-dir R [--space pixel|latent] [--steps N] [--parallel dp|fsdp] [--devices N]
                            [--overwrite] [key=value ...]     (keys: lineage_jax/imagegen/setup.py DiffusionConfig)
    lineage diffusion sample --run-dir R --out grid.png [--n 64] [--sampler ddpm|ddim] [--steps 50] [--eta 0]
                             [--guidance 3] [--model-eps] [--label 7] [--seed 0]

``schedule --json`` prints one object with the full arrays; otherwise a few rows and the endpoints.
Every argument and override is checked (one line, exit 2) before anything compiles; rerunning a
``train`` resumes its run directory; ``sample`` is deterministic given ``--seed``.
"""
from __future__ import annotations

import json

from lineage_jax.commands.devices import init_devices
from lineage_jax.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("diffusion", help="diffusion models (DDPM/DDIM): the noise schedule; train and sample "
                                                "class-conditional digit models")
    sub = p.add_subparsers(dest="diffusion_command", required=True)
    q = sub.add_parser("schedule", help="print a noise schedule's betas and alphas_cumprod")
    q.add_argument("--schedule", default="linear", help="linear (DDPM) or cosine (Nichol & Dhariwal 2021)")
    q.add_argument("--timesteps", type=int, default=1000, help="T, the number of diffusion steps (default 1000)")
    q.add_argument("--beta-start", type=float, default=1e-4, help="linear: first beta (default 1e-4)")
    q.add_argument("--beta-end", type=float, default=0.02, help="linear: last beta (default 0.02)")
    q.add_argument("--json", action="store_true", help="print one JSON object with the full arrays")
    q.set_defaults(func=cmd_schedule)
    t = sub.add_parser("train", help="train (or resume) a class-conditional DDPM with classifier-free guidance on the "
                                     "8x8 digits, in pixel or latent space")
    t.add_argument("--run-dir", required=True, help="the run directory (created, or resumed)")
    t.add_argument("--space", default=None, help="pixel (the U-Net on 8x8 images) or latent (on the autoencoder's 4x4 "
                                                 "latents)")
    t.add_argument("--steps", dest="train_steps", type=int, default=None, help="diffusion training steps (default 1500)")
    t.add_argument("--parallel", default="dp", help="dp (parameters replicated) or fsdp (split over the devices)")
    t.add_argument("--devices", type=int, default=None, help="emulate N CPU devices (before JAX starts)")
    t.add_argument("--data-dir", default=None, help="where the TFDS digits are prepared (default $TFDS_DATA_DIR or "
                                                    "~/.cache/lineage_jax/tfds)")
    t.add_argument("--overwrite", action="store_true", help="start afresh (clears only the run's own files)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="DiffusionConfig fields, e.g. base=16 lr=1e-3")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("sample", help="sample a trained run into a PNG grid")
    s.add_argument("--run-dir", required=True, help="a `lineage diffusion train` run")
    s.add_argument("--out", required=True, help="the PNG to write")
    s.add_argument("--n", type=int, default=64, help="how many samples (default 64)")
    s.add_argument("--sampler", default="ddim", help="ddim (default) or ddpm (all T ancestral steps)")
    s.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50; ddpm takes all T)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM's eta: 0 deterministic, 1 DDPM's variance")
    s.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale w (1: conditional "
                                                              "model alone, 0: unconditional; default 3)")
    s.add_argument("--model-eps", action="store_true", help="DDIM: keep the model's eps after clipping x0 (diffusers' "
                   "default) instead of re-deriving eps from the clipped x0 (the default here; at guidance 3 the "
                   "kept eps gives blotchy digits, see `lineage lesson diffusion`)")
    s.add_argument("--label", type=int, default=None, help="one digit 0-9 for every sample (default: 0-9 in turn)")
    s.add_argument("--seed", type=int, default=0, help="the sampling seed (same seed, same images)")
    s.add_argument("--nrow", type=int, default=None, help="images per grid row (default 10, or sqrt(n) for one label)")
    s.add_argument("--json", action="store_true", help="print what was drawn as JSON")
    s.set_defaults(func=cmd_sample)


def _check(args) -> None:
    if args.schedule not in ("linear", "cosine"):
        raise ConfigError(f"--schedule={args.schedule}: allowed linear, cosine")
    if args.timesteps < 2:
        raise ConfigError(f"--timesteps={args.timesteps}: must be an integer >= 2")
    if not 0 < args.beta_start <= args.beta_end < 1:
        raise ConfigError(f"--beta-start={args.beta_start} --beta-end={args.beta_end}: "
                          f"need 0 < beta-start <= beta-end < 1")


def cmd_schedule(args) -> int:
    _check(args)
    from lineage_jax.diffusion import make_schedule
    s = make_schedule(args.schedule, args.timesteps, args.beta_start, args.beta_end)
    betas, acp = [float(b) for b in s.betas], [float(a) for a in s.alphas_cumprod]
    if args.json:
        out = {"schedule": args.schedule, "timesteps": args.timesteps, "betas": betas, "alphas_cumprod": acp}
        if args.schedule == "linear":
            out.update(beta_start=args.beta_start, beta_end=args.beta_end)
        print(json.dumps(out))
        return 0
    T = args.timesteps
    print(f"{args.schedule} schedule, T = {T}")
    print(f"{'t':>6}  {'beta':>12}  {'alphas_cumprod':>14}  {'sqrt(1-acp)':>12}")
    for t in sorted({0, T // 4, T // 2, 3 * T // 4, T - 1}):
        print(f"{t:>6}  {betas[t]:>12.6g}  {acp[t]:>14.6g}  {(1 - acp[t]) ** 0.5:>12.6g}")
    return 0


def _train_config(args):
    from lineage_jax.imagegen.setup import PARALLEL, DiffusionConfig
    from lineage_jax.lessons.harness import configure, parse_overrides
    from lineage_jax.config.errors import one_of
    one_of("--parallel", args.parallel, PARALLEL)
    values = parse_overrides(args.overrides, DiffusionConfig)
    for flag, value in (("space", args.space), ("steps", args.train_steps)):
        if value is not None:
            values[flag] = str(value)
    return configure(DiffusionConfig, values, spelling={"space": "--space", "steps": "--steps"})


def cmd_train(args) -> int:
    cfg = _train_config(args)                 # one line for a bad flag or key=value, before JAX starts
    init_devices(args.devices)
    from lineage_jax.imagegen.run import train
    summary = train(cfg, args.run_dir, parallel=args.parallel, data_dir=args.data_dir, progress=not args.no_progress,
                    overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary))
        return 0
    if summary["resumed_from"] >= summary["steps"]:
        print(f"nothing to do: {summary['run_dir']} is trained to step {summary['resumed_from']} (raise --steps to "
              f"go on)")
        return 0
    ae = summary["autoencoder"]
    extra = f"; autoencoder recon {ae['recon']:.3f}, scale factor {summary['scale']:.4f}" if ae else ""
    print(f"done: {summary['space']} DDPM, steps {summary['resumed_from']} -> {summary['steps']} on "
          f"{summary['devices']} device(s) ({summary['parallel']}), loss {summary['final_loss']:.4f}{extra}")
    print(f"run files in {summary['run_dir']}; sample with: lineage diffusion sample --run-dir {summary['run_dir']} "
          f"--out grid.png")
    return 0


def cmd_sample(args) -> int:
    from lineage_jax.imagegen.run import check_sample_request
    check_sample_request(args.n, args.sampler, args.steps, args.eta, args.guidance, args.label)
    if args.nrow is not None and args.nrow < 1:
        raise ConfigError(f"--nrow={args.nrow}: must be at least 1")
    from lineage_jax.imagegen.run import sample
    info = sample(args.run_dir, args.n, args.out, sampler=args.sampler, steps=args.steps, eta=args.eta,
                  guidance=args.guidance, label=args.label, seed=args.seed, nrow=args.nrow,
                  recompute_eps=not args.model_eps)
    if args.json:
        print(json.dumps(info))
        return 0
    what = f"digit {args.label}" if args.label is not None else "digits 0-9 in turn"
    print(f"wrote {info['out']}: {info['n']} samples ({what}), {info['sampler']} {info['steps']} steps, "
          f"guidance {info['guidance']:g}, seed {info['seed']}, {info['space']} space")
    return 0
