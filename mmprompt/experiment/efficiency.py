"""What one training step of a tuning method costs (the paper's Section 5 / Figure 4 analogue).

:func:`step_cost` applies a method to a copy of the backbone and times full AdamW training steps (forward,
backward, update) on one fixed batch of a task, and measures memory in three device-independent parts:

* ``activation_mb``: tensors autograd saves for the backward pass (found with
  ``torch.autograd.graph.saved_tensors_hooks``; parameters excluded, shared storages counted once). A
  frozen layer still saves its activations when a prefix further down needs gradients through it, so
  this part shrinks far less than the trainable count suggests;
* ``gradient_mb`` and ``optimizer_mb``: a gradient and AdamW's two moments per trainable parameter;
* ``weights_mb``: all parameters.

On CUDA ``peak_cuda_mb`` adds the allocator's peak during the timed steps.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Any

import torch

from mmprompt.core.checks import check_int
from mmprompt.experiment.tune import resolve_data, resolve_method, split_dataset
from mmprompt.data.tasks import TASKS
from mmprompt.experiment.profiles import get_profile
from mmprompt.training.losses import Seq2SeqLoss
from mmprompt.tuning import apply_method, count_parameters

__all__ = ["saved_activation_bytes", "step_cost"]

_MB = 1024 * 1024


def saved_activation_bytes(model: torch.nn.Module, loss_fn, batch: dict) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors saved for backward by one forward pass (parameters excluded, storages counted
    once) and the loss, whose graph is still alive."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, batch)
    return sum(seen.values()), loss


def step_cost(backbone, task: str, method: str | object = "prefix", *, profile: str = "ci",
              data_dir: str | os.PathLike | None = None, batch_size: int | None = None, steps: int = 3,
              warmup: int = 1, lr: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Cost of training ``method`` on ``task``: median step time over ``steps`` timed steps (after
    ``warmup``), samples per second, seconds per 100 samples, trainable parameters and memory in MB
    (see the module docstring). The backbone is not changed."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: allowed {TASKS}")
    name, config = resolve_method(method)
    if config is None:
        raise ValueError(f"method={method!r}: zero-shot does not train; pick a training method")
    check_int("steps", steps, 1)
    check_int("warmup", warmup, 0)
    prof = get_profile(profile, batch_size=batch_size)
    data = resolve_data(prof, data_dir)
    device = torch.device(prof.device)
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone.model)
    apply_method(model, config)
    model.to(device).train()
    counts = count_parameters(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr if lr is not None else prof.lr_for(name))
    ds = split_dataset(backbone, task, data, "train", prof)
    batch = ds.collater([ds[i] for i in range(min(prof.batch_size, len(ds)))])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    loss_fn = Seq2SeqLoss(pad_id=1, label_smoothing=0.1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        optimizer.step()

    activation, loss = saved_activation_bytes(model, loss_fn, batch)
    loss.backward()  # frees the measured graph
    optimizer.zero_grad(set_to_none=True)
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    n = int(batch["target_ids"].shape[0])
    n_trainable = counts["trainable"]
    return {
        "task": task, "method": name, "batch_size": n, "step_time_s": step_time, "samples_per_s": n / step_time,
        "s_per_100_samples": 100 * step_time / n, "trainable": n_trainable, "total": counts["total"],
        "trainable_%": 100 * counts["fraction"], "activation_mb": activation / _MB,
        "gradient_mb": 4 * n_trainable / _MB, "optimizer_mb": 8 * n_trainable / _MB,
        "weights_mb": 4 * counts["total"] / _MB,
        "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / _MB if device.type == "cuda" else None,
    }
