"""Bounded concurrency for endpoint calls: at most ``concurrency`` tasks in flight, every result handed to the calling
thread (which alone writes files), tasks taken lazily so a generator may decode videos as it goes."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

__all__ = ["run_bounded"]

T = TypeVar("T")


def run_bounded(tasks: Iterable[T], fn: Callable[[T], Any],
                on_done: Callable[[T, Any, BaseException | None], None], concurrency: int = 8,
                should_stop: Callable[[], bool] | None = None, on_idle: Callable[[], None] | None = None,
                idle_s: float = 0.1) -> None:
    """Run ``fn(task)`` for every task with at most ``concurrency`` at a time; ``on_done(task, result, error)``
    runs on the calling thread as each finishes. ``tasks`` is consumed lazily (at most ``2 * concurrency`` taken
    ahead). ``should_stop``: no new task starts once it returns true (a tripped circuit breaker). ``on_idle``: called
    on the calling thread at least every ``idle_s`` seconds while waiting (e.g. to flush buffered results)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    it = iter(tasks)
    if concurrency == 1:
        for t in it:
            if should_stop is not None and should_stop():
                break
            try:
                r, e = fn(t), None
            except Exception as ex:  # noqa: BLE001 - handed to on_done, which records it
                r, e = None, ex
            on_done(t, r, e)
            if on_idle is not None:
                on_idle()
        return
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llavidal-llm")
    pending: dict[Any, T] = {}
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < 2 * concurrency:
                if should_stop is not None and should_stop():
                    exhausted = True
                    break
                try:
                    t = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, t)] = t
            if not pending:
                break
            done, _ = wait(list(pending), timeout=idle_s if on_idle is not None else None,
                           return_when=FIRST_COMPLETED)
            for fut in done:
                t = pending.pop(fut)
                e = fut.exception()
                on_done(t, None if e is not None else fut.result(), e)
            if on_idle is not None:
                on_idle()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
