"""``lineage scaling sweep``: an IsoFLOP grid of small GPTs on the embedded corpus (``lineage_jax.scaling.sweep``).

    lineage scaling sweep --budgets 1e11,3e11,1e12 --sizes 5 --out DIR [--devices N] [key=value ...]

Then ``lineage scaling fit --runs DIR``. Runs as one program over several processes like
``lineage train`` (``--coordinator`` or ``lineage launch local``): every run of the grid is. Rerunning the same command skips finished runs and
resumes an interrupted one.
"""
from __future__ import annotations

import math
import os

from lineage_jax.commands.devices import add_distributed_args, init_jax
from lineage_jax.config import ConfigError

DEFAULT_BUDGETS = "1e11,3e11,1e12"


def register(sub) -> None:
    s = sub.add_parser("sweep", help="train an IsoFLOP grid of small GPTs (budgets × sizes) for `scaling fit`")
    s.add_argument("--budgets", default=DEFAULT_BUDGETS, metavar="C1,C2,...",
                   help=f"training FLOP budgets, C = 6ND (default {DEFAULT_BUDGETS}: ~30 min on 2 CPU cores)")
    s.add_argument("--sizes", type=int, default=5, metavar="K",
                   help="model sizes per budget (default 5; Approach 2 needs >= 3)")
    s.add_argument("--tokens-per-param", type=float, default=20.0, metavar="R",
                   help="centre each budget's sizes on N = sqrt(C / 6R) (default 20, Chinchilla's ratio)")
    s.add_argument("--spread", type=float, default=2.5, metavar="Q", help="ratio between neighbouring sizes (2.5)")
    s.add_argument("--out", required=True, metavar="DIR", help="the sweep's directory (one run directory per run)")
    s.add_argument("--config", default="tiny", help="base preset (default tiny; the sweep sets shape, steps, schedule)")
    s.add_argument("--devices", type=int, default=None, help="emulate N CPU devices (before JAX starts)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to every run, e.g. optim.lr=3e-3")
    add_distributed_args(s)   # every run of the grid as one program over several processes
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from lineage_jax.config import load_config
    from lineage_jax.lessons.harness import positive_list
    from lineage_jax.scaling.sweep import BASE
    budgets = positive_list("--budgets", args.budgets, float, "1e11,3e11,1e12")
    if not all(math.isfinite(c) for c in budgets):
        raise ConfigError(f"--budgets={args.budgets}: every budget must be a finite number of FLOPs")
    if len(set(budgets)) < 2:
        raise ConfigError(f"--budgets={args.budgets}: give 2 or more different budgets (a fit needs them)")
    if args.sizes < 2:
        raise ConfigError(f"--sizes={args.sizes}: at least 2 sizes per budget (an IsoFLOP parabola needs 3)")
    if not (args.tokens_per_param > 0 and args.spread > 1):
        raise ConfigError("--tokens-per-param must be > 0 and --spread > 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out={args.out}: is a file; give a directory")
    base = load_config(args.config, [*BASE, *args.overrides])
    init_jax(args)
    from lineage_jax.scaling.sweep import sweep
    r = sweep(base, budgets, args.sizes, args.out, progress=not args.no_progress,
              tokens_per_param=args.tokens_per_param, spread=args.spread)
    print(f"sweep: {r['runs']} runs ({len(r['trained'])} trained, {len(r['skipped'])} already finished), "
          f"{r['flops']:.3g} FLOPs in {r['out']}; next: lineage scaling fit --runs {r['out']}")
    return 0
