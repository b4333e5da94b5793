"""Training configuration (OFA's recipe as defaults) and its validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig"]

_SCHEDULES = ("polynomial", "constant")
_AMP = ("none", "bf16", "fp16")
_MODES = ("max", "min")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"TrainConfig.{name}={value!r} is invalid; allowed: {allowed}")


def _check_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        _fail(name, value, f"a finite number in {left}{lo}, {hi}{right}")


def _check_int(name: str, value: Any, lo: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        _fail(name, value, f"an integer >= {lo}" + (" or None" if optional else ""))


@dataclass
class TrainConfig:
    """Hyperparameters and run settings of :func:`mmprompt.training.train`.

    Defaults follow OFA's prompt-tuning recipe: AdamW (0.9, 0.999), eps 1e-8, weight decay 0.01,
    polynomial (power 1, i.e. linear) decay to ``end_lr`` 0 after a warmup of 6 % of the steps,
    gradient clipping at 1.0 and label smoothing 0.1. ``batch_size`` is per process; one
    optimizer step sees ``batch_size * grad_accum * world_size`` examples.
    Training length is ``max_steps`` optimizer steps, ``epochs`` passes, or the smaller of both.
    """

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "polynomial"  # or "constant" (both after the linear warmup)
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None  # overrides warmup_ratio when set
    end_lr: float = 0.0
    power: float = 1.0
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    shuffle: bool = True
    drop_last: bool = False
    clip_norm: float | None = 1.0  # None or 0 disables clipping (the norm is still checked)
    label_smoothing: float = 0.1
    drop_worst_ratio: float = 0.0  # OFA's --drop-worst-ratio: drop this share of the worst target tokens
    drop_worst_after: int = 0  # ... once this many updates are done (OFA's --drop-worst-after)
    pad_id: int = 1
    amp: str = "none"
    ema_decay: float | None = None
    eval_every: int | None = None  # optimizer steps; an evaluation also runs at the end
    save_every: int | None = None  # None: save last/ at every evaluation and at the end
    early_stopping_patience: int | None = None  # evaluations without improvement
    metric: str | None = None  # key of eval_fn's dict that selects best/ and early stopping
    mode: str = "max"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    out_dir: str | Path | None = None  # None: no files at all (no checkpoints, no metrics.jsonl)
    resume: bool = False  # continue from out_dir/last/ when it exists
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    find_unused_parameters: bool = False
    save_full: bool = False  # True: save the whole model state, not just trainable params
    save_buffers: bool = True  # save the model's buffers (e.g. BatchNorm statistics) with weights
    restore_best: bool = False  # load best/ weights into the model when training ends
    progress: bool = True
    progress_label: str = "train"  # the progress bar's label

    def __post_init__(self) -> None:
        _check_float("lr", self.lr, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf, hi_open=True)
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas)):
            _fail("betas", self.betas, "a pair of numbers in [0, 1)")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        _check_float("eps", self.eps, 0.0, math.inf, lo_open=True, hi_open=True)
        if self.schedule not in _SCHEDULES:
            _fail("schedule", self.schedule, " | ".join(_SCHEDULES))
        _check_float("warmup_ratio", self.warmup_ratio, 0.0, 1.0, hi_open=True)
        _check_int("warmup_steps", self.warmup_steps, 0, optional=True)
        _check_float("end_lr", self.end_lr, 0.0, self.lr)
        _check_float("power", self.power, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_int("max_steps", self.max_steps, 1, optional=True)
        _check_int("epochs", self.epochs, 1, optional=True)
        if self.max_steps is None and self.epochs is None:
            _fail("max_steps", None, "an integer >= 1 (set max_steps, epochs or both)")
        if (self.warmup_steps is not None and self.max_steps is not None
                and self.warmup_steps >= self.max_steps):
            _fail("warmup_steps", self.warmup_steps, f"an integer < max_steps={self.max_steps}")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("grad_accum", self.grad_accum, 1)
        if self.clip_norm is not None:
            _check_float("clip_norm", self.clip_norm, 0.0, math.inf, hi_open=True)
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        _check_float("drop_worst_ratio", self.drop_worst_ratio, 0.0, 1.0, hi_open=True)
        _check_int("drop_worst_after", self.drop_worst_after, 0)
        _check_int("pad_id", self.pad_id, 0)
        if self.amp not in _AMP:
            _fail("amp", self.amp, " | ".join(_AMP))
        if self.amp == "fp16" and str(self.device).startswith("cpu"):
            _fail("amp", self.amp, "'none' or 'bf16' on CPU (fp16 autocast needs CUDA)")
        if self.ema_decay is not None:
            _check_float("ema_decay", self.ema_decay, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_int("eval_every", self.eval_every, 1, optional=True)
        _check_int("save_every", self.save_every, 1, optional=True)
        _check_int("early_stopping_patience", self.early_stopping_patience, 1, optional=True)
        if self.early_stopping_patience is not None and self.metric is None:
            _fail("metric", None, "a key of eval_fn's result when early_stopping_patience is set")
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            _fail("metric", self.metric, "a non-empty string or None")
        if self.mode not in _MODES:
            _fail("mode", self.mode, " | ".join(_MODES))
        _check_int("seed", self.seed, 0)
        _check_int("num_workers", self.num_workers, 0)
        _check_int("log_every", self.log_every, 1)
        if self.resume and self.out_dir is None:
            _fail("resume", self.resume, "False when out_dir is None (resume reads out_dir/last/)")
        dev = str(self.device)
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            _fail("device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps for a run of ``total_steps`` optimizer steps."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, max(total_steps - 1, 0))
        return int(self.warmup_ratio * total_steps)  # fairseq/OFA truncate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary of all fields."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        return out
