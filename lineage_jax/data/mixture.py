"""Weighted mixtures of datasets with per-component epoch limits (The Pile, Gao et al. 2020, Table 1:
each component has a sampling weight and a number of epochs).

``MixturePlan`` is pure: (seed, global example index) → (component, row). Example ``g`` draws a
uniform ``u_g`` (``default_rng([seed, block])``, blocks of ``block`` examples) and takes the
component whose interval of the weights — renormalised over the components still *alive* at ``g`` —
holds ``u_g`` (inverse CDF). A component is alive until it has served ``floor(epochs · rows)``
examples (``epochs=0``: no limit); when every component is spent the mixture ends (``MixtureEnded``).
The ``j``-th example of component ``k`` is row ``permutation_{seed,k,e}[j mod rows_k]`` of epoch
``e = j // rows_k``: each epoch visits every row once, in its own order. So before any component is
spent, component counts are Binomial(n, weight_k / Σ weights); a spent component's share moves to
the others in proportion to their weights.

Nothing depends on what was drawn before except through ``(seed, g)``: resuming at step ``s`` gives
the same batches as running through (``draws`` replays the per-block component counts up to ``g``
with numpy, cached, and no rows). ``realised(n)`` gives the counts, proportions and epochs consumed
after ``n`` examples — what the training log and ``mixture.png`` show.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from lineage_jax.config import ConfigError


class MixtureEnded(ConfigError):
    """Every component has served its epochs: the run asks for more examples than the mixture holds."""


@dataclasses.dataclass(frozen=True)
class MixturePlan:
    sizes: tuple[int, ...]          # rows of each component
    weights: tuple[float, ...]      # sampling weights (any positive scale)
    epochs: tuple[float, ...]       # epoch limit of each component; 0 = unlimited
    seed: int = 0
    names: tuple[str, ...] = ()
    block: int = 1024

    def __post_init__(self):
        k = len(self.sizes)
        if k == 0 or len(self.weights) != k or len(self.epochs) != k:
            raise ConfigError(f"a mixture needs one size, weight and epochs per component (got {len(self.sizes)}, "
                              f"{len(self.weights)}, {len(self.epochs)})")
        for i, (n, w, e) in enumerate(zip(self.sizes, self.weights, self.epochs)):
            name = self.names[i] if i < len(self.names) else str(i)
            if n < 1:
                raise ConfigError(f"mixture component {name}: has no rows")
            if not (w > 0 and math.isfinite(w)):
                raise ConfigError(f"mixture component {name}: weight={w} must be a positive number")
            if not (e >= 0 and math.isfinite(e)):
                raise ConfigError(f"mixture component {name}: epochs={e} must be >= 0 (0 = unlimited)")
            if 0 < e and math.floor(e * n) < 1:
                raise ConfigError(f"mixture component {name}: epochs={e} of {n} rows is less than one row")
        object.__setattr__(self, "_starts", [np.zeros(k, np.int64)])   # counts at each block start (cache)

    @property
    def limits(self) -> np.ndarray:
        return np.array([math.floor(e * n) if e > 0 else np.iinfo(np.int64).max
                         for n, e in zip(self.sizes, self.epochs)], np.int64)

    @property
    def total(self) -> float:
        """Examples before the mixture ends (inf when some component is unlimited)."""
        return math.inf if any(e == 0 for e in self.epochs) else float(self.limits.sum())

    def _block(self, b: int, start: np.ndarray) -> np.ndarray:
        """Components of block ``b``'s examples given the counts at its start (−1 once all are spent)."""
        u = np.random.default_rng([self.seed, b]).random(self.block)
        w = np.asarray(self.weights, np.float64)
        limits, counts = self.limits, start.copy()
        comp = np.full(self.block, -1, np.int64)
        at = 0
        while at < self.block:
            alive = counts < limits
            if not alive.any():
                break
            cdf = np.cumsum(np.where(alive, w, 0.0))
            pick = np.minimum(np.searchsorted(cdf / cdf[-1], u[at:], side="right"), len(w) - 1)
            while not alive[pick].all():                           # float edge: step off a dead component
                pick = np.where(alive[pick], pick, pick - 1)
            # the first example at which some component would pass its limit ends this stretch
            onehot = np.zeros((pick.size, len(w)), np.int64)
            onehot[np.arange(pick.size), pick] = 1
            over = (counts + np.cumsum(onehot, axis=0)) > limits
            stop = int(np.argmax(over.any(axis=1))) if over.any() else pick.size
            comp[at:at + stop] = pick[:stop]
            counts += onehot[:stop].sum(axis=0)
            at += stop
        return comp

    def _counts_at_block(self, b: int) -> np.ndarray:
        starts = self._starts
        while len(starts) <= b:
            comp = self._block(len(starts) - 1, starts[-1])
            starts.append(starts[-1] + np.bincount(comp[comp >= 0], minlength=len(self.sizes)))
        return starts[b]

    def draws(self, position: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(component, row) int64 [count] of the examples ``position .. position + count − 1``."""
        if position < 0 or count < 1:
            raise ValueError(f"position={position}, count={count}: need position >= 0 and count >= 1")
        comps, rows = np.empty(count, np.int64), np.empty(count, np.int64)
        g = position
        while g < position + count:
            b, off = divmod(g, self.block)
            start = self._counts_at_block(b)
            comp = self._block(b, start)
            take = min(self.block - off, position + count - g)
            here = comp[off:off + take]
            if (here < 0).any():
                raise MixtureEnded(f"the mixture ends after {int(self.limits.sum())} examples (every component "
                                   f"has served its epochs); raise a component's epochs or train fewer steps")
            for k in np.unique(here):
                before = start[k] + int((comp[:off] == k).sum())
                j = before + np.cumsum(here == k)[here == k] - 1                  # the j-th draw of component k
                epoch, slot = np.divmod(j, self.sizes[k])
                out = np.empty(j.size, np.int64)
                for e in np.unique(epoch):
                    perm = np.random.default_rng([self.seed, 1 + int(k), int(e)]).permutation(self.sizes[k])
                    out[epoch == e] = perm[slot[epoch == e]]
                rows[g - position + np.flatnonzero(here == k)] = out
            comps[g - position:g - position + take] = here
            g += take
        return comps, rows

    def realised(self, n: int) -> dict:
        """After ``n`` examples: counts, proportions and epochs consumed per component, and the weights."""
        b, off = divmod(n, self.block)
        counts = self._counts_at_block(b).copy()
        if off:
            comp = self._block(b, counts)[:off]
            counts += np.bincount(comp[comp >= 0], minlength=len(self.sizes))
        names = self.names or tuple(str(i) for i in range(len(self.sizes)))
        w = np.asarray(self.weights) / sum(self.weights)
        return {"examples": int(n), "components": [
            {"name": names[k], "weight": float(w[k]), "count": int(counts[k]),
             "proportion": float(counts[k] / n) if n else 0.0, "epochs": float(counts[k] / self.sizes[k]),
             "epoch_limit": float(self.epochs[k])} for k in range(len(self.sizes))]}


class MixtureSampler:
    """Batches from several samplers (``loader.Sampler`` / ``PackedSampler``, one per component) in
    the plan's order: ``batch`` / ``batch_with_segments`` like theirs, row ``r`` of component ``k``
    being its sampler's window ``r``. The global index is the training loop's (step · batch)."""

    def __init__(self, samplers: Sequence, plan: MixturePlan):
        if len(samplers) != len(plan.sizes):
            raise ValueError("one sampler per mixture component")
        self.samplers, self.plan = list(samplers), plan
        self.rows_read = 0
        self.packed = False                     # batches with segments (prepared components, segment_mask)

    def _gather(self, position: int, batch_size: int, fetch) -> dict | np.ndarray:
        comps, rows = self.plan.draws(position, batch_size)
        parts = {}
        for k in np.unique(comps):
            parts[int(k)] = fetch(self.samplers[k], rows[comps == k])
        first = next(iter(parts.values()))
        if isinstance(first, dict):
            out = {key: np.empty((batch_size, *v.shape[1:]), v.dtype) for key, v in first.items()}
            for k, part in parts.items():
                for key in out:
                    out[key][comps == k] = part[key]
            return out
        out = np.empty((batch_size, *first.shape[1:]), first.dtype)
        for k, part in parts.items():
            out[comps == k] = part
        return out

    def batch(self, position: int, batch_size: int) -> np.ndarray:
        self.rows_read += batch_size
        return self._gather(position, batch_size, lambda s, w: s.windows(w))

    def batch_with_segments(self, position: int, batch_size: int) -> dict[str, np.ndarray]:
        self.rows_read += batch_size
        return self._gather(position, batch_size, lambda s, w: s.windows_with_segments(w))


def plot_mixture(plan: MixturePlan, batch_size: int, steps: int, path, points: int = 60):
    """``mixture.png``: realised proportion of each component against its weight over the run (left),
    and the epochs each has consumed against its limit (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted({max(1, round(steps * i / points)) for i in range(1, points + 1)})
    stats = [plan.realised(s * batch_size) for s in xs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, c in enumerate(stats[-1]["components"]):
        line, = a.plot(xs, [s["components"][k]["proportion"] for s in stats], label=c["name"])
        a.axhline(c["weight"], color=line.get_color(), ls=":", lw=1)
        b.plot(xs, [s["components"][k]["epochs"] for s in stats], color=line.get_color(), label=c["name"])
        if c["epoch_limit"]:
            b.axhline(c["epoch_limit"], color=line.get_color(), ls=":", lw=1)
    a.set(xlabel="step", ylabel="share of examples so far", title="realised proportions (dotted: weights)")
    b.set(xlabel="step", ylabel="epochs consumed", title="epochs (dotted: limits)")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def build_mixture(data_cfg, seed: int, context: int, tokenizer) -> tuple[MixtureSampler, MixtureSampler]:
    """(train, eval) samplers of ``data_cfg.mixture``: one ``PackedSampler`` per prepared dataset (or one
    ``Sampler`` of token windows per TFDS dataset), drawn by a ``MixturePlan`` with the components'
    weights; the train plan keeps their epoch limits, the eval plan has none (it is read repeatedly)."""
    import dataclasses as dc

    from lineage_jax.data.loader import (PackedSampler, Sampler, check_prepared_tokenizer, load_prepared,
                                         load_splits)
    train, evals = [], []                  # evals: (component, sampler) of those with an eval split
    for c in data_cfg.mixture:
        where = f"data.mixture {c.name}"
        if c.is_prepared():
            packed = load_prepared(c.name)
            check_prepared_tokenizer(packed.meta, tokenizer, where)
            eos = int(packed.meta["eos_id"])
            train.append(PackedSampler(packed.train, seed, eos, where=f"{where} (train split)"))
            if len(packed.eval["tokens"]):       # prepared with --eval-fraction 0: no eval rows, left out of eval
                evals.append((c, PackedSampler(packed.eval, seed, eos, where=f"{where} (eval split)")))
        else:
            splits = load_splits(dc.replace(data_cfg, mixture=(), tfds_name=c.name), tokenizer)
            train.append(Sampler(splits.train, context, seed, where=f"{where} (train split)"))
            evals.append((c, Sampler(splits.eval, context, seed, where=f"{where} (eval split)")))
    if not evals:
        raise ConfigError("data.mixture: no component has an eval split; prepare one with --eval-fraction > 0")
    names = tuple(c.name for c in data_cfg.mixture)
    plan = MixturePlan(tuple(s.num_windows for s in train), tuple(c.weight for c in data_cfg.mixture),
                       tuple(c.epochs for c in data_cfg.mixture), seed, names)
    eval_plan = MixturePlan(tuple(s.num_windows for _, s in evals), tuple(c.weight for c, _ in evals),
                            (0.0,) * len(evals), seed + 1, tuple(c.name for c, _ in evals))
    evals = [s for _, s in evals]
    packed = data_cfg.mixture_prepared() and data_cfg.segment_mask
    out = MixtureSampler(train, plan), MixtureSampler(evals, eval_plan)
    for m in out:
        m.packed = packed
    return out


__all__ = ["MixturePlan", "MixtureSampler", "MixtureEnded", "plot_mixture", "build_mixture"]
