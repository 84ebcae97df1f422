"""How the data modules run their per-subject work: one exclusive file lock for the caches that several processes
may build at once (the phantom, prepared data) and the one way they build such a cache (:func:`build_once`), and one
runner of per-subject jobs, in this process or in a pool
of freshly spawned processes (forking a process whose torch/OpenMP threads have run can deadlock)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


class FileLock:
    """Exclusive advisory lock on ``path`` (POSIX ``fcntl``; a no-op where unavailable), e.g. so that several ranks
    that find a cache missing build it once."""

    def __init__(self, path: str | Path):
        self.path, self.handle = Path(path), None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the lock
            self.handle = None


def build_once(
    folder: str | os.PathLike, matches: Callable[[], bool], build: Callable[[], Any], check: Callable[[], Any]
) -> bool:
    """Match, lock, check again, build: nothing when ``matches()`` says ``folder`` already holds the cache; else
    ``check()`` (which raises where ``folder`` may not be replaced) before the lock file ``.<name>.lock`` is made
    beside it, then under the lock, unless a concurrent caller (e.g. another rank) built it meanwhile, ``build()``.
    Whether this call built it."""
    folder = Path(folder)
    if matches():
        return False
    check()
    with FileLock(folder.parent / f".{folder.name}.lock"):
        if matches():
            return False
        build()
    return True


def _single_threaded_worker() -> None:
    """Process-pool initialiser: one torch thread per worker (the workers already run in parallel)."""
    import torch

    torch.set_num_threads(1)


def run_jobs(worker: Callable[[Any], Any], jobs: Sequence[Any], num_workers: int = 0) -> Iterator[Any]:
    """``worker(job)`` for every job, yielded in order: in this process, or with ``num_workers > 0`` in a pool of
    spawned processes (``worker`` must then be a module-level function)."""
    if num_workers and num_workers > 0 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=int(num_workers), mp_context=context, initializer=_single_threaded_worker
        ) as pool:
            yield from pool.map(worker, jobs, chunksize=max(1, len(jobs) // (4 * int(num_workers))))
        return
    for job in jobs:
        yield worker(job)
