"""Grain as the training input's order (``data/grain_order.py``): the sampler's contract holds for
Grain's permutation as for NumPy's, and a global batch is the same however many processes read it."""
import numpy as np
import pytest

from lineage_jax.config import ConfigError, DataConfig
from lineage_jax.data import Sampler
from lineage_jax.data.grain_order import GrainOrder


def _stream(n=1000):
    return np.arange(n, dtype=np.int32)


@pytest.mark.parametrize("order", ["grain", "numpy"])
def test_every_epoch_visits_every_window_once_and_epochs_differ(order):
    s = Sampler(_stream(), seq_len=10, seed=7, order=order)
    n = s.num_windows
    firsts = []
    for epoch in range(3):
        batch = s.batch(epoch * n, n)
        np.testing.assert_array_equal(batch[:, 1:], batch[:, :-1] + 1)      # windows of the stream
        np.testing.assert_array_equal(np.sort(batch[:, 0]), np.arange(n) * 10)
        np.testing.assert_array_equal(s.epoch_order(epoch) * 10, batch[:, 0])
        firsts.append(batch[:, 0])
    assert not np.array_equal(firsts[0], firsts[1]) and not np.array_equal(firsts[1], firsts[2])


@pytest.mark.parametrize("order", ["grain", "numpy"])
def test_the_order_is_a_pure_function_of_seed_and_position(order):
    s = Sampler(_stream(), seq_len=10, seed=5, order=order)
    n = s.num_windows
    for position, bsz in [(0, 4), (13, 8), (n - 3, 4), (2 * n - 1, 2), (3 * n - 5, 70)]:
        whole = s.batch(position, 2 * bsz)
        np.testing.assert_array_equal(whole, np.concatenate([s.batch(position, bsz), s.batch(position + bsz, bsz)]))
        fresh = Sampler(_stream(), seq_len=10, seed=5, order=order)     # a resumed run: new object
        np.testing.assert_array_equal(fresh.batch(position + bsz, bsz), whole[bsz:])
    other = Sampler(_stream(), seq_len=10, seed=6, order=order)
    assert not np.array_equal(s.batch(0, 16), other.batch(0, 16))


def test_grain_and_numpy_are_different_permutations_of_the_same_windows():
    g, p = (Sampler(_stream(), seq_len=10, seed=3, order=o) for o in ("grain", "numpy"))
    n = g.num_windows
    assert not np.array_equal(g.epoch_order(0), p.epoch_order(0))
    np.testing.assert_array_equal(np.sort(g.epoch_order(0)), np.sort(p.epoch_order(0)))
    assert g.batch(0, n).shape == p.batch(0, n).shape


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_each_process_reads_only_its_rows_and_the_global_batch_does_not_depend_on_how_many(processes):
    B, steps = 8, 30                                   # 30 steps of 8 cross two epochs of 99 windows
    reference = Sampler(_stream(), seq_len=10, seed=11, order="grain")
    readers = [Sampler(_stream(), seq_len=10, seed=11, order="grain") for _ in range(processes)]
    rows = B // processes
    for step in range(steps):
        parts = [r.batch(step * B + i * rows, rows) for i, r in enumerate(readers)]   # process i's block
        np.testing.assert_array_equal(np.concatenate(parts), reference.batch(step * B, B))
    assert [r.rows_read for r in readers] == [steps * rows] * processes


def test_any_integer_seed_maps_to_grains_32_bits():
    a, b = GrainOrder(50, 2 ** 32 + 9), GrainOrder(50, 9)
    np.testing.assert_array_equal(a.epoch_order(1), b.epoch_order(1))
    assert sorted(GrainOrder(50, -1).epoch_order(0).tolist()) == list(range(50))


def test_an_unknown_loader_is_one_line():
    with pytest.raises(ConfigError, match=r"^data.loader=tfdata: allowed grain, numpy$"):
        DataConfig(loader="tfdata").validate()
    with pytest.raises(ConfigError, match="allowed grain, numpy"):
        Sampler(_stream(), seq_len=10, seed=0, order="tfdata")


def test_grain_is_the_default_order_everywhere():
    from lineage_jax.config import DataConfig
    from lineage_jax.data.grain_order import DEFAULT_ORDER
    assert DataConfig().loader == DEFAULT_ORDER == "grain"
    assert Sampler(_stream(), seq_len=10, seed=0).order == "grain"
