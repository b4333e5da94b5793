"""Evaluation under data parallelism: every rank decodes a shard, rank outputs are gathered, one score.

The evaluated examples are cut into the batches a single process would decode (``settings.batch_size``
consecutive examples each) and the batches are dealt round-robin to the ranks, so every batch — its
examples and hence its padding — is exactly the one a single process decodes: N processes give the
predictions and metrics of one process. :func:`mmprompt.training.distributed.gather_objects` collects
every rank's predictions and each rank scores the whole set, so all ranks return the same result. In a
single process :func:`evaluate_sharded` is ``backbone.evaluate``.

:func:`shared_tempdir` gives all ranks of a machine one scratch directory (rank 0 creates and removes it),
which the training loop needs: it writes checkpoints on rank 0 and every rank reads ``best/`` back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from mmprompt.eval.evaluation import EvalResult, EvalSettings, score_predictions
from mmprompt.training.distributed import barrier, broadcast_object, dist_info, gather_objects

__all__ = ["DatasetShard", "evaluate_sharded", "score_rows", "shard_indices", "shared_tempdir"]


class DatasetShard:
    """The examples ``indices`` of ``dataset``; every other attribute (task, collater, tokenizer, ...) is
    the dataset's, so evaluation code that reads them works on a shard unchanged."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def shard_indices(n: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Indices of the examples ``0..n-1`` that ``rank`` decodes: the single-process batches of
    ``batch_size`` consecutive examples, dealt round-robin (batch k to rank k mod world_size)."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or n < 0:
        raise ValueError(f"shard_indices(n={n}, batch_size={batch_size}, rank={rank}, world_size={world_size}): "
                         "needs n >= 0, batch_size >= 1 and 0 <= rank < world_size")
    starts = range(0, n, batch_size)[rank::world_size]
    return [i for s in starts for i in range(s, min(s + batch_size, n))]


def score_rows(task: str, rows: Sequence[dict[str, Any]], settings: EvalSettings,
               cider_cache: Any = None) -> EvalResult:
    """Prediction rows (``{"id", "prediction", "reference"}``) scored the way
    :func:`mmprompt.eval.evaluation.evaluate` scores them."""
    preds = [r["prediction"] for r in rows]
    refs = [r["reference"] for r in rows]
    if task == "refcoco":
        refs = [r["box"] for r in refs]
    return score_predictions(task, preds, refs, settings, cider_cache, list(rows))


def evaluate_sharded(backbone: Any, model: torch.nn.Module, dataset: Any, settings: EvalSettings,
                     amp: torch.dtype | None = None) -> EvalResult:
    """``backbone.evaluate(dataset, settings, model)``, split across the ranks of the process group (see
    the module docstring); every rank returns the whole set's result. ``amp``: autocast dtype (CUDA)."""
    device = torch.device(settings.device)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    info = dist_info()
    if not info.enabled:
        with autocast:
            return backbone.evaluate(dataset, settings, model=model)
    n = len(dataset) if settings.max_examples is None else min(settings.max_examples, len(dataset))
    mine = shard_indices(n, settings.batch_size, info.rank, info.world_size)
    rows: list[dict[str, Any]] = []
    if mine:
        local = dataclasses.replace(settings, max_examples=None, progress=settings.progress and info.is_main)
        with autocast:
            rows = backbone.evaluate(DatasetShard(dataset, mine), local, model=model).predictions
    if len(rows) != len(mine):
        raise RuntimeError(f"rank {info.rank}: {len(rows)} predictions for {len(mine)} examples")
    by_index: dict[int, dict[str, Any]] = {}
    for indices, part in gather_objects((mine, rows)):
        by_index.update(zip(indices, part, strict=True))
    ordered = [by_index[i] for i in range(n)]
    return score_rows(dataset.task, ordered, settings, getattr(dataset, "cider_cache", None))


@contextlib.contextmanager
def shared_tempdir(prefix: str = "mmprompt-") -> Iterator[Path]:
    """A temporary directory that every rank of the process group sees (rank 0 creates it and removes it
    after all ranks are done); a plain temporary directory in a single process. Ranks must share a file
    system (one machine); across machines give the training loop an ``out_dir`` on a shared disk."""
    info = dist_info()
    path = tempfile.mkdtemp(prefix=prefix) if info.is_main else None
    path = broadcast_object(path)
    try:
        yield Path(path)
    finally:
        barrier()
        if info.is_main:
            shutil.rmtree(path, ignore_errors=True)
