"""An IsoFLOP sweep (Hoffmann et al. 2022, §3.2) of small GPTs trained here through the normal loop.

For each budget C and each of ``sizes`` model shapes around a first guess of the optimum, one run
of D = C / 6N tokens (N: the matmul count, ``models.count.matmul_params``), its cosine schedule
ending at its own last step: Chinchilla's point that a cosine longer than the run overstates the
loss of short runs (their §3.1 and Fig. A1). Each run is an ordinary, resumable run directory
under the sweep's directory; a finished one is skipped on rerun. ``sweep.json`` records the plan
(each run's name, budget, shape, N, D), which ``lineage scaling fit --runs DIR`` reads to group
runs by budget.

Shapes come from one ladder: width w in steps of 16, L = max(1, round(w / 32)) layers, heads of
width 16, so depth and width grow together (Kaplan §3.1: shape matters little at fixed N).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Sequence

from lineage_jax.config import Config, ConfigError, ModelConfig

SWEEP_JSON = "sweep.json"
BASE = ["model.context=64", "model.attn_chunks=1", "model.scan_layers=false", "train.batch_size=16",
        "train.eval_batches=16", "train.async_checkpointing=false"]


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    budget: float
    layers: int
    width: int
    heads: int
    params: int              # matmul N
    steps: int

    def tokens(self, per_step: int) -> int:
        return self.steps * per_step


def shape(width: int) -> tuple[int, int, int]:
    """(layers, width, heads) of the ladder at ``width``."""
    return max(1, round(width / 32)), width, max(1, width // 16)


@functools.lru_cache(maxsize=None)
def _matmul_params(m: ModelConfig) -> int:
    from lineage_jax.models.count import matmul_params
    return matmul_params(m)


def _rough_params(m: ModelConfig) -> float:
    """GPT-2's count in closed form (blocks 12LD² + 13LD, the head V·D): only to pick rungs near a target."""
    return 12 * m.layers * m.width ** 2 + 13 * m.layers * m.width + m.vocab_size * m.width


def ladder(base: Config, widths: Sequence[int] = tuple(range(16, 529, 16))) -> list[tuple[float, tuple[int, int, int]]]:
    """(rough N, shape) for every width of the ladder, smallest first (the exact N of a chosen
    shape is read off its parameter tree by ``plan``)."""
    return [(_rough_params(dataclasses.replace(base.model, layers=L, width=W, heads=H)), (L, W, H))
            for L, W, H in map(shape, widths)]


def plan(budgets: Sequence[float], sizes: int, base: Config, *, tokens_per_param: float = 20.0,
         spread: float = 2.5) -> list[Run]:
    """``sizes`` distinct shapes per budget, nearest in log N to N*·spread^j (j centred on 0), with
    N* = sqrt(C / 6r) the optimum if D/N were r (Chinchilla's ~20); each run's steps = C / 6N / tokens per step."""
    if sizes < 2:
        raise ConfigError(f"--sizes={sizes}: at least 2 sizes per budget (an IsoFLOP parabola needs 3)")
    rungs = ladder(base)
    per_step = base.train.batch_size * base.model.context
    runs = []
    for c in sorted(budgets):
        centre = math.sqrt(c / (6 * tokens_per_param))
        chosen: list[tuple[float, tuple[int, int, int]]] = []
        for j in range(sizes):
            target = centre * spread ** (j - (sizes - 1) / 2)
            free = [r for r in rungs if r not in chosen]
            chosen.append(min(free, key=lambda r: abs(math.log(r[0] / target))))
        for _, (L, W, H) in sorted(chosen):
            n = _matmul_params(dataclasses.replace(base.model, layers=L, width=W, heads=H))
            steps = max(1, round(c / (6 * n) / per_step))
            if steps < 20:
                raise ConfigError(f"budget {c:.3g} gives a {L}L×{W} model ({n:,} params) only {steps} steps of "
                                  f"{per_step} tokens; raise the budget or lower train.batch_size")
            runs.append(Run(f"c{c:.3g}-L{L}w{W}".replace("+", ""), float(c), L, W, H, n, steps))
    return runs


def run_config(base: Config, run: Run, out: Path) -> Config:
    """The run's config: its shape, steps, a schedule ending at its last step, eval once at the end."""
    warmup = max(1, min(base.optim.warmup_steps, run.steps // 10))
    return dataclasses.replace(
        base, run_dir=str(out / run.name),
        model=dataclasses.replace(base.model, layers=run.layers, width=run.width, heads=run.heads),
        optim=dataclasses.replace(base.optim, warmup_steps=warmup),
        train=dataclasses.replace(base.train, steps=run.steps, eval_every=run.steps,
                                  log_every=max(1, run.steps // 40), ckpt_every=max(50, run.steps // 4)))


def finished(run_dir: Path, steps: int) -> bool:
    from lineage_jax.train.loop import read_metrics
    rows = read_metrics(run_dir / "metrics.jsonl")
    return bool(rows) and rows[-1]["step"] >= steps and "eval_loss" in rows[-1]


def sweep(base: Config, budgets: Sequence[float], sizes: int, out: str | Path, *, progress: bool = True,
          **plan_kw) -> dict:
    """Plan, write ``sweep.json``, train every unfinished run (one progress bar over the sweep's FLOPs).
    ``plan_kw`` go to ``plan`` (tokens_per_param, spread)."""
    import jax
    from tqdm.auto import tqdm

    from lineage_jax.runs import atomic
    from lineage_jax.train.loop import train
    from parallel.distributed import verdict_of_process_0
    out = Path(out)
    runs = plan(budgets, sizes, base, **plan_kw)
    per_step = base.train.batch_size * base.model.context
    main = jax.process_index() == 0          # several processes: process 0 writes the plan and shows progress
    out.mkdir(parents=True, exist_ok=True)
    if main:
        atomic.write_text(out / SWEEP_JSON, json.dumps({"budgets": sorted(budgets), "sizes": sizes,
                                                        "tokens_per_step": per_step,
                                                        "runs": [dataclasses.asdict(r) for r in runs]}, indent=1))
    total = sum(6.0 * r.params * r.tokens(per_step) for r in runs)
    done, trained, skipped = 0.0, [], []
    with tqdm(total=total / 1e9, unit="GFLOP", disable=not (progress and main), dynamic_ncols=True, desc="sweep",
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} GFLOP [{elapsed}<{remaining}]{postfix}") as bar:
        for r in runs:
            flops = 6.0 * r.params * r.tokens(per_step)
            cfg = run_config(base, r, out)
            bar.set_postfix_str(f"{r.name}: N={r.params:,} D={r.tokens(per_step):,}")
            if verdict_of_process_0(finished(Path(cfg.run_dir), r.steps)):   # all skip or train it
                skipped.append(r.name)
            else:
                train(cfg, progress=False, sample_chars=0)
                trained.append(r.name)
            done += flops
            bar.update(flops / 1e9)
    return {"runs": len(runs), "trained": trained, "skipped": skipped, "flops": total, "out": str(out)}
