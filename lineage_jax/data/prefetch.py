"""Host batches drawn ahead on one background thread, served in order.

The training loop blocks on every step's metrics (the finiteness check), so without help the host
draws batch ``s + 1`` only after step ``s`` has finished, and the device waits for it. ``Prefetch``
draws ``produce(0), produce(1), …`` on a thread, up to ``depth`` items queued (and one more being
drawn) ahead of the consumer, while
the device runs the step in flight. What is drawn does not change: item ``k`` is ``produce(k)``,
the same pure function of the index the loop would call itself, so resuming, the order across
processes and the batches a run sees are exactly those of drawing in line.

Only host work runs on the thread (NumPy slicing, Grain's index lookups); device transfers stay
on the caller's thread. An exception raised by ``produce(k)`` is raised by the ``k``-th ``next``,
where drawing in line would have raised it; ``close`` (or leaving the ``with`` block) stops the
thread and joins it, so no thread outlives the loop, whether it ended, raised or was interrupted.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class Prefetch(Generic[T]):
    """Iterate ``produce(0) … produce(count - 1)``, each computed ahead on a daemon thread."""

    def __init__(self, produce: Callable[[int], T], count: int, depth: int = 2, name: str = "prefetch"):
        if depth < 1:
            raise ValueError(f"depth={depth}: must be at least 1")
        self._produce, self._count = produce, int(count)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._served = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        for k in range(self._count):
            try:
                item = (True, self._produce(k))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it in line
                if isinstance(e, StopIteration):   # raised from next() it would end the consumer's loop
                    wrapped = RuntimeError(f"produce({k}) raised StopIteration")   # silently (PEP 479's rule)
                    wrapped.__cause__, e = e, wrapped
                item = (False, e)
            if not self._put(item) or not item[0]:
                return
        self._put((True, _DONE))

    def _put(self, item) -> bool:
        """Queue ``item`` unless asked to stop; False when stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetch[T]":
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise RuntimeError("Prefetch: next() after close() or after a draw raised")
        if self._served >= self._count:
            raise StopIteration
        ok, value = self._queue.get()
        if value is _DONE:
            raise StopIteration
        self._served += 1
        if not ok:
            self.close()
            raise value
        return value

    def close(self) -> None:
        """Stop drawing and join the thread (idempotent)."""
        self._stop.set()
        while self._thread.is_alive():
            try:                               # a producer blocked on a full queue sees the stop flag
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> "Prefetch[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
