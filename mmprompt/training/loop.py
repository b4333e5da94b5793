"""One training loop for every tuning method (full finetuning, BitFit, adapters, LoRA, prefixes).

The loop trains whatever is trainable (``requires_grad=True`` parameters of the model, or an
explicit ``params``), with OFA's recipe: AdamW, warmup + polynomial decay, clipping, label
smoothing, optional EMA, AMP, gradient accumulation and data parallelism. It is deterministic
and resumable: a run killed and resumed from ``out_dir/last/`` ends with the same parameters and
metrics as an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate
from mmprompt.core.progress import progress_bar

from mmprompt.core.checks import check_metrics
from mmprompt.core.atomic import write_json, write_jsonl

from . import checkpoint as ck
from .config import TrainConfig
from .distributed import (DistInfo, all_reduce_sum, barrier, broadcast_object, gather_objects,
                          init_distributed)
from .ema import EMA
from .losses import Seq2SeqLoss, batch_weight
from .sampling import epoch_batches, micro_batches_per_epoch
from .schedule import build_scheduler
from .weights import (LoadStateDictFn, ParamsLike, StateDictFn, apply_buffers, apply_weights,
                      named_trainable, persistent_buffers, weights_to_save)

__all__ = ["NonFiniteLossError", "TrainResult", "seed_everything", "train"]

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], torch.Tensor]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
Callback = Callable[[dict[str, Any]], "bool | None"]


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or the gradient norm of an update is NaN or infinite."""


@dataclass
class TrainResult:
    """What :func:`train` did. ``history`` holds every record written to ``metrics.jsonl``."""

    steps: int
    epochs: float
    best_metric: float | None
    best_step: int | None
    final_metrics: dict[str, float]
    wall_time_s: float
    history: list[dict[str, Any]]
    stop_reason: str
    out_dir: Path | None = None
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None
    metrics_path: Path | None = None

    @property
    def paths(self) -> dict[str, Path | None]:
        return {"out_dir": self.out_dir, "last": self.last_checkpoint,
                "best": self.best_checkpoint, "metrics": self.metrics_path}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in obj):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


@dataclass
class _State:
    """Loop counters; everything here goes into ``state.pt``."""

    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches of ``epoch`` already consumed by this rank
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    last_eval_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    log_loss_sum: float = 0.0
    log_count: int = 0
    elapsed_s: float = 0.0
    stop_reason: str | None = None


_STATE_FIELDS = tuple(f.name for f in fields(_State))


class _Trainer:
    def __init__(self, model: nn.Module, data: Any, cfg: TrainConfig, *, params: ParamsLike | None,
                 loss_fn: LossFn | None, eval_fn: EvalFn | None, collate_fn: Callable | None,
                 callbacks: Sequence[Callback] | None, state_dict_fn: StateDictFn | None,
                 load_state_dict_fn: LoadStateDictFn | None) -> None:
        self._check_data(data)
        self.cfg, self.model, self.data = cfg, model, data
        self.loss_fn = loss_fn or Seq2SeqLoss(cfg.pad_id, cfg.label_smoothing, cfg.drop_worst_ratio,
                                              cfg.drop_worst_after)
        self.eval_fn, self.callbacks = eval_fn, list(callbacks or [])
        self.collate_fn = collate_fn or default_collate
        self.state_dict_fn, self.load_state_dict_fn = state_dict_fn, load_state_dict_fn
        if (state_dict_fn is None) != (load_state_dict_fn is None):
            raise ValueError("state_dict_fn and load_state_dict_fn must be given together")
        want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto"
                                                      and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device={cfg.device!r} but CUDA is not available; "
                             "allowed here: 'cpu' or 'auto'")
        if cfg.amp == "fp16" and not want_cuda:
            raise ValueError("TrainConfig.amp='fp16' needs CUDA; allowed on CPU: 'none' | 'bf16'")
        self.named, groups = named_trainable(model, params)
        self.params = [p for _, p in self.named]
        self.dist: DistInfo = init_distributed(want_cuda)
        self.device = self._device(want_cuda)
        self.nb = micro_batches_per_epoch(len(data), cfg.batch_size,
                                          world_size=self.dist.world_size, drop_last=cfg.drop_last)
        if self.nb == 0:
            raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} with drop_last=True leaves "
                             f"no batch of {len(data)} examples on {self.dist.world_size} rank(s)")
        self.steps_per_epoch = math.ceil(self.nb / cfg.grad_accum)
        limits = [cfg.max_steps] if cfg.max_steps is not None else []
        if cfg.epochs is not None:
            limits.append(cfg.epochs * self.steps_per_epoch)
        self.total_steps = min(limits)
        model.to(self.device)
        if isinstance(params, nn.Module):
            params.to(self.device)
        wrong = [n for n, p in self.named if p.device != self.device]
        if wrong:
            raise ValueError(f"trainable parameters {wrong[:3]} are not on {self.device}; "
                             "move them (or pass their module as params)")
        self.optimizer = self._optimizer(groups)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.ema = EMA(self.params, cfg.ema_decay) if cfg.ema_decay is not None else None
        self.out = Path(cfg.out_dir) if cfg.out_dir is not None else None
        self.metrics_path = self.out / "metrics.jsonl" if self.out else None
        self.state = _State()
        self.fwd_model: nn.Module = model
        self.extra: list[nn.Parameter] = []

    # ----------------------------------------------------------------- setup
    @staticmethod
    def _check_data(data: Any) -> None:
        if isinstance(data, DataLoader):
            raise ValueError("train_data is a DataLoader; pass its dataset (and collate_fn): the "
                             "loop builds its own seeded, resumable loader")
        if isinstance(data, IterableDataset) or not (hasattr(data, "__len__")
                                                     and hasattr(data, "__getitem__")):
            raise ValueError(f"train_data of type {type(data).__name__} is invalid; allowed: a "
                             "map-style dataset (len() and [i]) such as a list or Dataset")
        if len(data) == 0:
            raise ValueError("train_data is empty; allowed: at least one example")

    def _device(self, want_cuda: bool) -> torch.device:
        if not want_cuda:
            return torch.device("cpu")
        if self.cfg.device.startswith("cuda:"):
            return torch.device(self.cfg.device)
        return torch.device("cuda", self.dist.local_rank if self.dist.enabled
                            else torch.cuda.current_device())

    def _optimizer(self, groups: list[dict[str, Any]] | None) -> torch.optim.Optimizer:
        cfg = self.cfg
        impl = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups if groups is not None else self.params, lr=cfg.lr,
                                 betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 **impl)

    def _prepare_dir(self) -> None:
        """Resume from ``last/`` or start afresh (seeding, clearing old metrics/best)."""
        last = ck.find_checkpoint(self.out, "last") if self.out else None
        if self.cfg.resume and last is not None:
            self._resume(last)
        else:
            if self.cfg.resume:
                log.info("resume=True but %s has no checkpoint; starting afresh", self.out)
            seed_everything(self.cfg.seed + self.dist.rank)
            if self.out and self.dist.is_main:
                self.out.mkdir(parents=True, exist_ok=True)
                if last is not None or (self.out / "best").exists():
                    log.warning("resume=False: replacing the run in %s", self.out)
                for name in ("best", "last", "best.old", "last.old"):
                    if (self.out / name).exists():
                        shutil.rmtree(self.out / name)
                write_jsonl(self.metrics_path, [])
        if self.out and self.dist.is_main:
            ck.clean_stale(self.out)
            write_json(self.out / "config.json", self.cfg.to_dict())
        barrier()

    def _resume(self, path: Path) -> None:
        ckpt = ck.read_checkpoint(path)
        saved = ckpt.state or {}
        if saved.get("world_size", 1) != self.dist.world_size:
            raise ValueError(f"{path} was written with world_size={saved.get('world_size')}; this "
                             f"run has {self.dist.world_size}; resume with the same world size")
        self._warn_config_changes()
        apply_weights(self.model, self.named, ckpt.weights, full=bool(ckpt.meta["save_full"]),
                      load_state_dict_fn=self.load_state_dict_fn)
        apply_buffers(self.model, ckpt.buffers)
        if self.ema is not None:
            if ckpt.ema is None:
                raise ValueError(f"ema_decay is set but {path} holds no EMA weights")
            self.ema.load([ckpt.ema[n] for n, _ in self.named])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        for name in _STATE_FIELDS:
            setattr(self.state, name, saved[name])
        ck.restore_rng(saved["rng"][self.dist.rank])
        if self.dist.is_main:
            write_jsonl(self.metrics_path, self.state.history)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step,
                 self.state.epoch, self.state.micro)

    def _warn_config_changes(self) -> None:
        saved = self.out / "config.json"
        if not saved.is_file():
            return
        old, new = json.loads(saved.read_text()), self.cfg.to_dict()
        ignore = {"resume", "progress", "num_workers", "device"}
        changed = sorted(k for k in new if k not in ignore and old.get(k) != new[k])
        if changed:
            log.warning("resuming with changed config fields %s; the run will differ from an "
                        "uninterrupted one", changed)

    def _wrap(self) -> None:
        if not self.dist.enabled:
            return
        own = {id(p) for p in self.model.parameters()}
        self.extra = [p for p in self.params if id(p) not in own]
        with torch.no_grad():
            for p in self.extra:
                dist.broadcast(p.data, src=0)
        if len(self.extra) < len(self.params):
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids,
                find_unused_parameters=self.cfg.find_unused_parameters)

    # ----------------------------------------------------------------- data
    def _windows(self) -> Iterator[tuple[int, int, list[Any]]]:
        """Yield ``(epoch, micro_end, micro_batches)`` per update, from the saved position."""
        cfg, epoch, start = self.cfg, self.state.epoch, self.state.micro
        while True:
            batches = epoch_batches(len(self.data), cfg.batch_size, epoch=epoch, seed=cfg.seed,
                                    rank=self.dist.rank, world_size=self.dist.world_size,
                                    shuffle=cfg.shuffle, drop_last=cfg.drop_last)[start:]
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            loader = DataLoader(self.data, batch_sampler=batches, collate_fn=self.collate_fn,
                                num_workers=cfg.num_workers, generator=gen,
                                pin_memory=self.device.type == "cuda")
            window: list[Any] = []
            pos = start
            for batch in loader:
                window.append(batch)
                pos += 1
                if len(window) == cfg.grad_accum or pos == self.nb:
                    yield epoch, pos, window
                    window = []
            epoch, start = epoch + 1, 0

    # ----------------------------------------------------------------- one update
    def _update(self, window: list[Any]) -> tuple[float, float, bool]:
        """Forward/backward the micro-batches and step; returns (loss, grad_norm, skipped)."""
        cfg, world = self.cfg, self.dist.world_size
        weights = torch.tensor([batch_weight(b, cfg.pad_id) for b in window], dtype=torch.float64)
        total = float(all_reduce_sum(weights.sum().reshape(1))[0])
        if total > 0:
            shares = (weights / total).tolist()
        else:  # no target token anywhere: equal shares of a zero loss
            shares = [1.0 / (len(window) * world)] * len(window)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        if isinstance(self.loss_fn, Seq2SeqLoss):
            self.loss_fn.updates = self.state.step
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(window):
            batch = _to_device(batch, self.device)
            last = i == len(window) - 1
            ddp = self.fwd_model is not self.model
            sync = self.fwd_model.no_sync() if ddp and not last else nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                    loss = self.loss_fn(self.fwd_model, batch)
                scaled = loss.float() * (shares[i] * world)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach().double() * shares[i]
        self._sync_extra_grads()
        loss_value = float(all_reduce_sum(loss_sum.reshape(1))[0])
        step = self.state.step + 1
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"non-finite loss {loss_value} at step {step}; training "
                                     f"stopped, {self._saved_note()}")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.clip_norm if cfg.clip_norm else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True))
        skipped = False
        if not math.isfinite(norm):
            if self.scaler is None:
                raise NonFiniteLossError(f"non-finite gradient norm {norm} at step {step} (loss "
                                         f"{loss_value}); training stopped, {self._saved_note()}")
            skipped = True  # fp16 overflow: GradScaler skips the step and lowers the scale
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None and not skipped:
            self.ema.update(self.params)
        return loss_value, norm, skipped

    def _saved_note(self) -> str:
        """What a stopped run leaves behind, truthfully: the resume point on disk, or that there is none."""
        last = ck.find_checkpoint(self.out, "last") if self.out else None
        if last is None:
            return "no checkpoint was saved" + (" (out_dir=None)" if self.out is None else f" in {self.out}")
        step = json.loads((last / ck.META).read_text()).get("step")
        return f"the checkpoint {last} (step {step}) is kept untouched"

    def _sync_extra_grads(self) -> None:
        for p in self.extra:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(self.dist.world_size)

    # ----------------------------------------------------------------- records
    def _record(self, rec: dict[str, Any]) -> None:
        self.state.history.append(rec)
        if self.metrics_path is not None and self.dist.is_main:
            ck.append_jsonl(self.metrics_path, rec)

    def _epoch_float(self) -> float:
        return round(self.state.epoch + self.state.micro / self.nb, 6)

    # ----------------------------------------------------------------- eval / save
    def _evaluate(self) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            swap = self.ema.swapped(self.params) if self.ema is not None else nullcontext()
            with swap:
                with torch.no_grad():
                    metrics = self.eval_fn(self.model)
                metrics = broadcast_object(self._check_metrics(metrics))
                improved = self._is_better(metrics)
                if improved:
                    st.best_metric, st.best_step, st.bad_evals = metrics[cfg.metric], st.step, 0
                    self._save("best", metrics)
                elif cfg.metric is not None:
                    st.bad_evals += 1
        finally:
            for m, mode in modes.items():
                m.train(mode)
        st.last_eval_step, st.last_metrics = st.step, dict(metrics)
        rec = {"event": "eval", "step": st.step, "epoch": self._epoch_float(), **metrics}
        if cfg.metric is not None:
            rec.update(best=st.best_metric, is_best=improved)
        self._record(rec)
        return rec

    def _check_metrics(self, metrics: Any) -> dict[str, float]:
        out = check_metrics("eval_fn", metrics)
        if self.cfg.metric is not None and self.cfg.metric not in out:
            raise ValueError(f"TrainConfig.metric={self.cfg.metric!r} is not among eval_fn's "
                             f"keys {sorted(out)}")
        return out

    def _is_better(self, metrics: Mapping[str, float]) -> bool:
        if self.cfg.metric is None:
            return False
        value, best = metrics[self.cfg.metric], self.state.best_metric
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value > best if self.cfg.mode == "max" else value < best

    def _save(self, name: str, metrics: Mapping[str, float] | None = None) -> None:
        """Write ``out_dir/name`` (collective in DDP: every rank must call it)."""
        if self.out is None:
            return
        full = self.cfg.save_full and self.state_dict_fn is None
        rngs = gather_objects(ck.capture_rng()) if name == "last" else None
        if self.dist.is_main:
            weights = weights_to_save(self.model, self.named, full=full,
                                      state_dict_fn=self.state_dict_fn)
            buffers = persistent_buffers(self.model) if self.cfg.save_buffers and not full else None
            ema = state = None
            if name == "last":
                if self.ema is not None:
                    ema = {n: s for (n, _), s in zip(self.named, self.ema.shadow, strict=True)}
                state = self._state_dict(rngs)
            meta = {"kind": name, "step": self.state.step, "epoch": self._epoch_float(),
                    "save_full": full, "metrics": dict(metrics or {}),
                    "ema_weights": self.ema is not None and name == "best",
                    "trainable": [n for n, _ in self.named]}
            ck.write_checkpoint(self.out / name, weights=weights, meta=meta, ema=ema,
                                buffers=buffers, state=state)
        barrier()

    def _state_dict(self, rngs: list[Any] | None) -> dict[str, Any]:
        return {name: getattr(self.state, name) for name in _STATE_FIELDS} | dict(
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler else {}, rng=rngs,
            world_size=self.dist.world_size, total_steps=self.total_steps)

    # ----------------------------------------------------------------- main loop
    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        self._prepare_dir()
        elapsed0, st, cfg = self.state.elapsed_s, self.state, self.cfg
        if self._finished():
            self._finish()  # resuming a finished run: nothing to train
            return self._result(elapsed0)
        st.stop_reason = None  # a run stopped by a callback (or given more steps) goes on
        self.model.train()
        self._wrap()
        bar = progress_bar(total=self.total_steps, initial=st.step, desc=cfg.progress_label, dynamic_ncols=True,
                   disable=not (cfg.progress and self.dist.is_main))
        windows = self._windows()
        try:
            while st.step < self.total_steps and st.stop_reason is None:
                epoch, micro_end, window = next(windows)
                lr = self.optimizer.param_groups[0]["lr"]
                loss, norm, skipped = self._update(window)
                st.step += 1
                st.epoch, st.micro = (epoch + 1, 0) if micro_end == self.nb else (epoch, micro_end)
                st.elapsed_s = elapsed0 + time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                self._after_step(loss, lr, norm, skipped)
        finally:
            windows.close()
            bar.close()
        if st.stop_reason is None:
            st.stop_reason = "max_steps" if self.total_steps == cfg.max_steps else "epochs"
        if self.eval_fn is not None and st.last_eval_step != st.step and st.step > 0:
            self._evaluate()
        self._record({"event": "end", "step": st.step, "epoch": self._epoch_float(),
                      "stop_reason": st.stop_reason, "best_metric": st.best_metric,
                      "best_step": st.best_step})
        st.elapsed_s = elapsed0 + time.perf_counter() - t0
        self._save("last", st.last_metrics)
        self._finish()
        return self._result(st.elapsed_s)

    def _finished(self) -> bool:
        ended = bool(self.state.history) and self.state.history[-1].get("event") == "end"
        return ended and (self.state.step >= self.total_steps
                          or self.state.stop_reason == "early_stopping")

    def _after_step(self, loss: float, lr: float, norm: float, skipped: bool) -> None:
        st, cfg = self.state, self.cfg
        rec = {"event": "train", "step": st.step, "epoch": self._epoch_float(), "loss": loss,
               "lr": lr, "grad_norm": norm}
        if skipped:
            rec["skipped"] = True
        st.log_loss_sum += loss
        st.log_count += 1
        events = [rec]
        if st.step % cfg.log_every == 0:
            self._record(dict(rec, loss=st.log_loss_sum / st.log_count))
            st.log_loss_sum, st.log_count = 0.0, 0
        evaluated = False
        if self.eval_fn is not None and cfg.eval_every and st.step % cfg.eval_every == 0:
            events.append(self._evaluate())
            evaluated = True
            patience = cfg.early_stopping_patience
            if patience is not None and st.bad_evals >= patience:
                st.stop_reason = "early_stopping"
                log.info("early stopping at step %d: %s did not improve on %s for %d evaluations",
                         st.step, cfg.metric, st.best_metric, patience)
        due = (st.step % cfg.save_every == 0) if cfg.save_every else evaluated
        if due and st.step < self.total_steps and st.stop_reason is None:
            self._save("last", st.last_metrics)
        # after the save: a callback that raises (a crash, a kill) leaves this step's checkpoint
        if any([bool(cb(dict(ev))) for ev in events for cb in self.callbacks]):
            st.stop_reason = st.stop_reason or "callback"

    def _finish(self) -> None:
        if self.cfg.restore_best and self.out is not None:
            best = ck.find_checkpoint(self.out, "best")
            if best is not None:
                ckpt = ck.read_checkpoint(best, with_state=False)
                apply_weights(self.model, self.named, ckpt.weights,
                              full=bool(ckpt.meta["save_full"]),
                              load_state_dict_fn=self.load_state_dict_fn)
                apply_buffers(self.model, ckpt.buffers)
                return
        if self.ema is not None:
            self.ema.copy_to(self.params)

    def _result(self, wall: float) -> TrainResult:
        st = self.state
        last = ck.find_checkpoint(self.out, "last") if self.out else None
        best = ck.find_checkpoint(self.out, "best") if self.out else None
        return TrainResult(steps=st.step, epochs=self._epoch_float(), best_metric=st.best_metric,
                           best_step=st.best_step, final_metrics=dict(st.last_metrics),
                           wall_time_s=wall, history=list(st.history),
                           stop_reason=st.stop_reason or "", out_dir=self.out,
                           last_checkpoint=last, best_checkpoint=best,
                           metrics_path=self.metrics_path)


def train(model: nn.Module, train_data: Dataset | Sequence[Any], config: TrainConfig, *,
          params: ParamsLike | None = None, loss_fn: LossFn | None = None,
          eval_fn: EvalFn | None = None, collate_fn: Callable[[list[Any]], Any] | None = None,
          callbacks: Sequence[Callback] | None = None, state_dict_fn: StateDictFn | None = None,
          load_state_dict_fn: LoadStateDictFn | None = None) -> TrainResult:
    """Train ``model``'s trainable parameters on ``train_data`` (a map-style dataset).

    - ``params``: what trains; default every ``requires_grad`` parameter of ``model``. A module
      (e.g. a prefix bank living outside the model), parameters, or parameter-group dicts.
    - ``loss_fn(model, batch) -> scalar``: the mean loss of a micro-batch; default
      :class:`Seq2SeqLoss` on the batch contract (``target_ids``, optional ``constraint_masks``).
      It receives the DDP-wrapped model under data parallelism: call it, don't reach inside.
      Each micro-batch's loss is weighted by its share of the update's non-pad target tokens
      (all micro-batches, all ranks), i.e. the update minimises the token mean, as OFA does.
    - ``eval_fn(model) -> dict[str, float]``: runs every ``eval_every`` steps and at the end, on
      every rank, under ``torch.no_grad()`` with the model in eval mode and EMA weights swapped
      in; use :func:`~mmprompt.training.distributed.reduce_metrics` for sharded evaluation.
      ``config.metric``/``mode`` choose ``best/`` and early stopping.
    - ``collate_fn``: list of examples -> batch (default ``torch.utils.data.default_collate``).
    - ``callbacks``: called with each record (every step's ``train`` record with that step's
      loss, each ``eval`` record), after any checkpoint of that step; returning True stops
      training cleanly. They run on every rank with identical records.
    - ``state_dict_fn(model)`` / ``load_state_dict_fn(model, tensors)``: what
      ``weights.safetensors`` holds (e.g. only prompt parameters); default the trainable parameters (or the full state
      with ``config.save_full``).

    Files (``config.out_dir``, rank 0 only): ``config.json``, ``metrics.jsonl`` (one JSON object
    per ``train`` log — loss averaged since the previous log —, ``eval`` and ``end`` event),
    ``last/`` (resume point) and ``best/`` (the evaluated weights with the best metric).
    A NaN/inf loss or gradient norm raises :class:`NonFiniteLossError` before the optimizer
    step and saves nothing. When training ends the model holds the EMA weights if EMA is on,
    or the ``best/`` weights with ``config.restore_best``.
    """
    trainer = _Trainer(model, train_data, config, params=params, loss_fn=loss_fn,
                       eval_fn=eval_fn, collate_fn=collate_fn, callbacks=callbacks,
                       state_dict_fn=state_dict_fn, load_state_dict_fn=load_state_dict_fn)
    return trainer.run()
