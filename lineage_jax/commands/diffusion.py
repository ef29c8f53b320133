"""``lineage diffusion schedule``: a DDPM noise schedule's table (betas, alphas_cumprod).

``--json`` prints one object with the full arrays (for plotting or comparing with another
implementation); otherwise a few rows and the endpoints. Arguments are checked (one line,
exit 2) before JAX is imported.
"""
from __future__ import annotations

import json

from lineage_jax.config import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("diffusion", help="diffusion models (DDPM/DDIM): the noise schedule")
    sub = p.add_subparsers(dest="diffusion_command", required=True)
    q = sub.add_parser("schedule", help="print a noise schedule's betas and alphas_cumprod")
    q.add_argument("--schedule", default="linear", help="linear (DDPM) or cosine (Nichol & Dhariwal 2021)")
    q.add_argument("--timesteps", type=int, default=1000, help="T, the number of diffusion steps (default 1000)")
    q.add_argument("--beta-start", type=float, default=1e-4, help="linear: first beta (default 1e-4)")
    q.add_argument("--beta-end", type=float, default=0.02, help="linear: last beta (default 0.02)")
    q.add_argument("--json", action="store_true", help="print one JSON object with the full arrays")
    q.set_defaults(func=cmd_schedule)


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
