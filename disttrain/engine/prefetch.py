"""Background prefetch: the next batches are built while this rank computes or waits on communication."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Prefetcher(Iterator[T]):
    """Calls `make(i)` for i in [start, stop) on one background thread, `depth` items ahead."""

    def __init__(self, make: Callable[[int], T], start: int, stop: int, *, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, start, stop), daemon=True)
        self._remaining = stop - start
        self._thread.start()

    def _run(self, make, start, stop) -> None:
        for i in range(start, stop):
            try:
                item = (make(i), None)
            except BaseException as exc:  # re-raised in the consumer
                item = (None, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or item[1] is not None:
                return

    def __next__(self) -> T:
        if self._remaining <= 0:
            raise StopIteration
        item, exc = self._queue.get()
        if exc is not None:
            raise exc
        self._remaining -= 1
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
