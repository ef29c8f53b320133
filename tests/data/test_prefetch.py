"""The prefetch thread serves exactly what drawing in line serves, raises where it would, and leaves no thread."""
import threading
import time

import numpy as np
import pytest

from lineage_jax.data import Sampler
from lineage_jax.data.prefetch import Prefetch


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("prefetch")}


@pytest.mark.parametrize("order", ["grain", "numpy"])
def test_prefetched_batches_are_the_in_line_draws(order):
    tokens = np.arange(1000, dtype=np.int32)
    s, t = Sampler(tokens, 10, seed=3, order=order), Sampler(tokens, 10, seed=3, order=order)
    with Prefetch(lambda k: s.batch(5 + 7 * k, 7), count=40) as batches:   # 280 rows: crosses two epochs
        got = list(batches)
    assert len(got) == 40
    for k, b in enumerate(got):
        np.testing.assert_array_equal(b, t.batch(5 + 7 * k, 7))
    assert s.rows_read == t.rows_read == 280            # nothing drawn beyond the last item


def test_the_thread_runs_ahead_but_at_most_depth_items():
    drawn = []
    batches = Prefetch(lambda k: drawn.append(k) or k, count=100, depth=3)
    assert next(batches) == 0
    time.sleep(0.2)                                      # time for the thread to fill the queue
    assert 2 <= len(drawn) <= 5                          # served 1, up to 3 queued, 1 blocked in put
    batches.close()
    assert not _threads()


def test_an_error_is_raised_at_its_index_and_stops_the_thread():
    def produce(k):
        if k == 3:
            raise ValueError("bad row 3")
        return k

    batches = Prefetch(produce, count=10)
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad row 3"):
        next(batches)
    batches.close()
    assert not _threads()


def test_leaving_early_joins_the_thread():
    with Prefetch(lambda k: k, count=10 ** 6, depth=2) as batches:
        assert next(batches) == 0
    assert not _threads()
    assert list(Prefetch(lambda k: k, count=0)) == []


def test_a_stop_iteration_in_a_draw_is_an_error_not_the_end_of_training():
    def produce(k):
        if k == 2:
            raise StopIteration                          # e.g. next() on an exhausted iterator inside a draw
        return k

    batches = Prefetch(produce, count=5)
    assert [next(batches), next(batches)] == [0, 1]
    with pytest.raises(RuntimeError, match=r"produce\(2\) raised StopIteration"):
        next(batches)
    with pytest.raises(RuntimeError, match="after close"):   # and it stays closed: no hang, no skipped item
        next(batches)
    assert not _threads()
