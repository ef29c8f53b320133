"""The training input's visiting order from Grain: ``grain.MapDataset.range(n).shuffle(seed).repeat()``.

Grain (the JAX data loader) offers two pipelines: an iterator one (``DataLoader``, whose position is
state to checkpoint with Orbax) and a random-access one (``MapDataset``). The training loop needs only
the second: element ``i`` of ``MapDataset.range(n).shuffle(seed).repeat()`` is the window that global
index ``i`` visits, epoch ``i // n`` being its own permutation of ``range(n)`` (Grain folds the epoch
into the seed). That makes the order a pure function of ``(seed, i)``, so:

- a resumed run needs no iterator state: the position is ``step * batch_size``, which the train state
  already holds (Orbax saves it with the parameters);
- a process reads only the global indices of its own rows (``Setup.process_rows``), and the global
  order does not depend on how many processes share it, so a run saved by two processes resumes on
  one, or four, with exactly the batches it would have seen.

What Grain's iterator pipeline adds (worker processes, prefetch, per-process sharding by
``ShardOptions``) is not used: its shard-then-shuffle order depends on the process count, which
would break the resume guarantee above, and the windows are slices of a token array already in
memory.

Why Grain is the default (``data.loader=grain``; ``numpy`` keeps NumPy's permutation): Grain answers
one index at a time through Python (about 9 µs per index on the 2-core CPU host), where NumPy
computes an epoch's permutation once and then slices it, so a draw costs more: 0.15 / 4.6 / 39 ms per
batch of 16 / 512 / 4,096 rows against 0.018 / 0.33 / 2.7 ms in one run of ``lineage bench input``
(9-15x; the ratio grows with load, 12-53x in a busier run). Drawn in line between steps that would
be a host stall; the training loop draws on a thread while the step runs (``data/prefetch.py``).
"""
from __future__ import annotations

import numpy as np

ORDERS = ("grain", "numpy")
DEFAULT_ORDER = "grain"          # config.DataConfig.loader defaults to the same (tests check they agree)


class GrainOrder:
    """Global index -> window number, through Grain's shuffled, repeated range."""

    def __init__(self, num_windows: int, seed: int):
        import grain   # the input pipeline's one Grain import: nothing else pays for it

        self.num_windows = int(num_windows)
        # Grain's seed is 32 bits; any integer seed maps to one, the same way every time.
        self._ds = grain.MapDataset.range(self.num_windows).shuffle(seed=int(seed) % 2 ** 32).repeat()

    def window_ids(self, position: int, batch_size: int) -> np.ndarray:
        """Window numbers at global indices ``position .. position + batch_size - 1``: int64."""
        ds = self._ds
        return np.fromiter((ds[i] for i in range(position, position + batch_size)), np.int64, batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The whole visiting order of ``epoch`` (a permutation of ``range(num_windows)``)."""
        return self.window_ids(epoch * self.num_windows, self.num_windows)
