"""The alignment runner's data order: each epoch a permutation of every row, a function of (seed, step) alone,
so a resumed run (or one that asks for steps out of order) reads what the uninterrupted run read."""
import numpy as np

from lineage_jax.align.run import Batches


def test_batches_cover_each_epoch_and_depend_on_the_step_alone():
    b = Batches(10, 4, seed=3)
    order = np.concatenate([b.indices(s) for s in range(5)])          # 20 rows = 2 epochs
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert not np.array_equal(order[:10], order[10:20])               # a fresh permutation per epoch
    fresh = Batches(10, 4, seed=3)
    assert all(np.array_equal(fresh.indices(s), order[4 * s:4 * s + 4]) for s in (4, 0, 2))
    assert not np.array_equal(Batches(10, 4, seed=4).indices(0), b.indices(0))
