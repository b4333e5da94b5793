"""Helpers shared by the benchmarks: fresh processes, peak memory, interleaved timing, JSON output.

* Time: all contenders live in one process and their steps are interleaved (:func:`interleaved`), the
  order rotating every repetition, so that the changing load of a shared machine hits them alike.
* Memory: each contender runs alone in a fresh spawned process (:func:`call`), which reports the peak
  it reached during its steps over what it held just before them: on CPU the resident set size sampled
  by a thread (:class:`RssSampler`; ``tracemalloc`` cannot see torch's allocations), on CUDA the
  allocator's ``max_memory_allocated`` (:func:`measure_peak`).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

__all__ = ["RssSampler", "call", "interleaved", "measure_peak", "paired_ratio", "peak_rss_bytes", "rss_bytes",
           "setup_process", "synchronize", "timed"]

MB = 2**20


def rss_bytes() -> int:
    """The resident set size of this process, in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """The largest resident set size this process has had so far (``ru_maxrss``; kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Samples the process RSS in a thread (torch kernels release the GIL) and keeps the maximum."""

    def __init__(self, interval: float = 0.0005) -> None:
        import psutil

        self._process, self._interval = psutil.Process(), interval
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work on ``device`` (no-op elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """Wall-clock seconds of ``fn()``, synchronising CUDA before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure_peak(run: Callable[[], Any], device: torch.device | str = "cpu") -> dict[str, float]:
    """Run ``run()`` and return ``{"step_memory_mb", "peak_total_mb"}``: the peak memory during it over
    what was held just before it, and the peak in total. CPU: sampled RSS (total: the process' peak
    RSS); CUDA: ``max_memory_allocated``."""
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"step_memory_mb": max(0, peak - before) / MB, "peak_total_mb": peak / MB}
    with RssSampler() as sampler:
        before = sampler.peak
        run()
    return {"step_memory_mb": max(0, sampler.peak - before) / MB, "peak_total_mb": peak_rss_bytes() / MB}


def interleaved(steps: Mapping[str, Callable[[], float]], warmup: int, reps: int,
                progress: Callable[[range], Any] | None = None) -> dict[str, list[float]]:
    """Call every step function ``warmup + reps`` times, one call of each per repetition, the order
    rotating every repetition (two contenders: A B, B A, A B, ...); returns the last ``reps`` results
    (seconds) of each."""
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds = range(warmup + reps)
    for rep in progress(rounds) if progress else rounds:
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = steps[name]()
            if rep >= warmup:
                times[name].append(elapsed)
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-repetition ratios (steps of one repetition ran under the same load)."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")


def setup_process(threads: int | None) -> None:
    """Quiet warnings and set torch's thread count (``None``: torch's choice)."""
    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)


def call(function: Callable[..., Any], args: tuple, in_process: bool = False) -> Any:
    """Run ``function(*args)`` here or in a fresh spawned process (its own peak memory, no shared state)."""
    if in_process:
        threads = torch.get_num_threads()
        try:
            with warnings.catch_warnings():
                return function(*args)
        finally:
            torch.set_num_threads(threads)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
