"""Multitask pretraining of a nano OFA on the synthetic world's pretraining mixture.

``python -m mmprompt.pretrain --preset ofa-nano [--profile cpu] [--resume] [--out DIR [--overwrite]]``

First the ResNet is warmed up alone on dense attribute recognition (:mod:`mmprompt.nano.vision_warmup`, the
stand-in for OFA's ImageNet-initialised ResNet). Then the mixture (captioning, grounding, grounded
captioning, image-text matching, VQA, object listing with boxes, text infilling) is fed as a curriculum:
scenes with at most one object first, then at most two, then everything. Each stage is one
:func:`mmprompt.training.train` run in ``<work-dir>/<k>``, so an interrupted pretraining resumes where it
stopped (``--resume``); together the stages form one schedule
(warmup, constant, linear decay in the last stage). The result is an OFA directory (safetensors +
config + tokenizer) with a ``pretrain.json`` record and a loss-curve PNG, ready for
:func:`mmprompt.experiment.backbones.load_model`.

Nothing is overwritten by default: a run lives in ``runs/pretrain/<preset>-<id>/`` (``<id>``: a fingerprint of
the settings, so the same command finds its run again), with the stages in ``stages/`` and the result in
``checkpoint/``. A work directory that holds stages is only continued with ``--resume``; an existing ``--out``
(e.g. a shipped checkpoint) is only replaced with ``--overwrite``, and then as a whole, atomically: no file of
the old checkpoint (model card, study files) stays behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from mmprompt.data import PretrainDataset, ensure_synthetic, load_tokenizer, split_path
from mmprompt.models.ofa import PRESETS, OFAModel, save_pretrained
from mmprompt.training import TrainConfig, load_weights, seq2seq_loss, train
from mmprompt.core.atomic import atomic_dir, write_figure, write_json
from mmprompt.core.checks import check_apart
from mmprompt.training import NonFiniteLossError
from mmprompt.training.checkpoint import find_checkpoint, load_tensors, save_tensors
from mmprompt.nano.vision_warmup import warm_up_resnet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A curriculum stage: scenes with at most ``max_objects`` objects for ``fraction`` of the steps."""

    max_objects: int
    fraction: float


DEFAULT_STAGES = (Stage(1, 0.15), Stage(2, 0.2), Stage(4, 0.65))


@dataclass
class PretrainConfig:
    preset: str = "ofa-nano"
    out: str | None = None  # None: runs/pretrain/<preset>-<id>/checkpoint
    work_dir: str | None = None  # stage checkpoints (resumable; not shipped); None: runs/pretrain/<preset>-<id>/stages
    profile: str = "cpu"
    data_dir: str | None = None  # a generated synthetic directory; None: the profile's (generated once)
    steps: int = 6000
    batch_size: int = 32
    lr: float = 3e-4  # 1e-3 kept the transformer from ever reading colour or shape off the image
    warmup_steps: int = 300
    resnet_warmup_steps: int = 1000  # 0: start the ResNet from random weights
    seed: int = 0
    eval_every: int = 500
    eval_examples: int = 256
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False  # replace an existing ``out`` (as a whole)
    stages: tuple[Stage, ...] = field(default=DEFAULT_STAGES)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: allowed {sorted(PRESETS)}")
        if self.profile not in ("ci", "cpu"):
            raise ValueError(f"profile={self.profile!r}: allowed 'ci' or 'cpu'")
        for name in ("steps", "batch_size", "eval_every", "eval_examples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an int >= 1")
        if not isinstance(self.resnet_warmup_steps, int) or self.resnet_warmup_steps < 0:
            raise ValueError(f"resnet_warmup_steps={self.resnet_warmup_steps!r}: must be an int >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: must be > 0")
        if not 0 <= self.warmup_steps < self.stage_steps()[0]:
            raise ValueError(f"warmup_steps={self.warmup_steps!r}: must be >= 0 and shorter than the first stage")
        if abs(sum(s.fraction for s in self.stages) - 1.0) > 1e-6 or any(s.fraction <= 0 for s in self.stages):
            raise ValueError(f"stages={self.stages!r}: fractions must be > 0 and sum to 1")
        run = Path("runs") / "pretrain" / f"{self.preset}-{self.run_id()}"
        self.out = str(self.out or run / "checkpoint")
        self.work_dir = str(self.work_dir or run / "stages")
        check_apart("out", self.out, "work_dir", self.work_dir)

    def run_id(self) -> str:
        """8 hex digits of a sha256 over the settings that decide the result (not paths, threads, flags)."""
        skip = {"out", "work_dir", "threads", "resume", "overwrite"}
        settings = {k: v for k, v in asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def stage_steps(self) -> list[int]:
        counts = [max(1, round(s.fraction * self.steps)) for s in self.stages]
        counts[-1] = max(1, self.steps - sum(counts[:-1]))
        return counts


def val_loss_fn(model: OFAModel, val: PretrainDataset, n: int, batch_size: int):
    """``eval_fn`` of the training loop: token cross-entropy (no smoothing) on the first ``n`` validation rows."""
    subset = Subset(val, range(min(n, len(val))))

    @torch.no_grad()
    def evaluate(_model) -> dict[str, float]:
        total, tokens = 0.0, 0
        for batch in DataLoader(subset, batch_size=batch_size, collate_fn=val.collater):
            logits = model(**{k: batch[k] for k in ("input_ids", "patch_images", "patch_masks",
                                                    "decoder_input_ids")}).logits
            n_tok = int(batch["target_ids"].ne(1).sum())
            total += float(seq2seq_loss(logits, batch["target_ids"], label_smoothing=0.0)) * n_tok
            tokens += n_tok
        return {"val_loss": total / max(tokens, 1)}

    return evaluate


def _stage_config(cfg: PretrainConfig, k: int, steps: int) -> TrainConfig:
    last = k == len(cfg.stages) - 1
    return TrainConfig(
        lr=cfg.lr, max_steps=steps, batch_size=cfg.batch_size, seed=cfg.seed + k,
        schedule="polynomial" if last else "constant",
        warmup_steps=cfg.warmup_steps if k == 0 else 0, warmup_ratio=0.0,
        eval_every=min(cfg.eval_every, steps), metric="val_loss", mode="min",
        label_smoothing=0.1, out_dir=Path(cfg.work_dir) / str(k), resume=cfg.resume, device="cpu",
    )


def _warm_resnet(cfg: PretrainConfig, model: OFAModel, root: Path, tok) -> dict | None:
    """Run the ResNet warm-up, or reload it from ``<work_dir>/resnet`` when resuming."""
    if not cfg.resnet_warmup_steps:
        return None
    done = Path(cfg.work_dir) / "resnet"
    if cfg.resume and (done / "resnet.safetensors").is_file() and (done / "warmup.json").is_file():
        model.encoder.embed_images.load_state_dict(load_tensors(done / "resnet.safetensors"))
        return json.loads((done / "warmup.json").read_text())
    size = model.config.patch_image_size
    train, val = (PretrainDataset(split_path(root, "pretrain", s), tok, size, subtasks=["listing"])
                  for s in ("train", "val"))
    record = warm_up_resnet(model, train, val, steps=cfg.resnet_warmup_steps, batch_size=cfg.batch_size,
                            seed=cfg.seed)
    logger.info("ResNet warm-up: %s", record)
    done.mkdir(parents=True, exist_ok=True)
    save_tensors(done / "resnet.safetensors", model.encoder.embed_images.state_dict())
    write_json(done / "warmup.json", record)
    return record


def _stage_runs(work_dir: Path) -> list[Path]:
    """What an earlier run left in ``work_dir``: stage checkpoints and the ResNet warm-up."""
    if not work_dir.is_dir():
        return []
    found = [d for d in sorted(work_dir.iterdir()) if d.is_dir() and d.name.isdigit()
             and any(find_checkpoint(d, n) for n in ("last", "best"))]
    return found + [d for d in (work_dir / "resnet",) if (d / "resnet.safetensors").is_file()]


def check_outputs(cfg: PretrainConfig) -> None:
    """Refuse, before any work, to replace an existing ``out`` without ``overwrite`` or to restart over an
    earlier run's stages without ``resume``."""
    earlier = _stage_runs(Path(cfg.work_dir))
    if earlier and not cfg.resume:
        raise ValueError(f"work_dir={cfg.work_dir!r} holds an earlier run ({', '.join(p.name for p in earlier)}); "
                         "allowed: resume=True (--resume) to continue it, or another work_dir")
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise ValueError(f"out={cfg.out!r} already exists; allowed: overwrite=True (--overwrite) to replace it "
                         "as a whole, or an out that does not exist")


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) the curriculum and write the finished checkpoint to ``cfg.out`` (see the module
    docstring for what is never overwritten)."""
    check_outputs(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    root = Path(cfg.data_dir) if cfg.data_dir else ensure_synthetic(cfg.profile)
    tok = load_tokenizer(root / "tokenizer")
    model = OFAModel.from_preset(cfg.preset, seed=cfg.seed, vocab_size=len(tok))
    size = model.config.patch_image_size
    val = PretrainDataset(split_path(root, "pretrain", "val"), tok, size)
    evaluate = val_loss_fn(model, val, cfg.eval_examples, cfg.batch_size)
    warmup = _warm_resnet(cfg, model, root, tok)
    history, stages = [], []
    for k, (stage, steps) in enumerate(zip(cfg.stages, cfg.stage_steps())):
        ds = PretrainDataset(split_path(root, "pretrain", "train"), tok, size, max_objects=stage.max_objects)
        logger.info("stage %d: max_objects=%d, %d examples, %d steps", k, stage.max_objects, len(ds), steps)
        result = train(model, ds, _stage_config(cfg, k, steps), collate_fn=ds.collater, eval_fn=evaluate)
        load_weights(model, result.last_checkpoint)  # a resumed, already finished stage returns at once
        history += [dict(r, stage=k) for r in result.history]
        stages.append({"max_objects": stage.max_objects, "examples": len(ds), "steps": result.steps,
                       "wall_time_s": round(result.wall_time_s, 1), **result.final_metrics})
    record = {
        "config": asdict(cfg), "data": str(root), "parameters": model.num_parameters(),
        "steps": sum(st["steps"] for st in stages), "wall_time_s": round(sum(st["wall_time_s"] for st in stages), 1),
        "resnet_warmup": warmup, "stages": stages,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads()},
        "history": history,
    }
    with atomic_dir(out) as tmp:  # the old directory is replaced as a whole, never merged into
        save_pretrained(model, tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "pretrain.json", record)
        plot_loss_curve(history, tmp / "pretrain_loss.png")
    return out


def plot_loss_curve(history: list[dict], path: Path) -> None:
    """Training and validation loss against steps, stage boundaries marked."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    offset, xs, ys, vx, vy, bounds = 0, [], [], [], [], []
    for stage in sorted({r["stage"] for r in history}):
        rows = [r for r in history if r["stage"] == stage]
        for r in rows:
            if "loss" in r:
                xs.append(offset + r["step"]); ys.append(r["loss"])
            if "val_loss" in r:
                vx.append(offset + r["step"]); vy.append(r["val_loss"])
        offset += max((r["step"] for r in rows), default=0)
        bounds.append(offset)
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(xs, ys, lw=0.8, label="train loss (label-smoothed)")
    ax.plot(vx, vy, "o-", label="val loss")
    for b in bounds[:-1]:
        ax.axvline(b, color="grey", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="loss", title="Pretraining (curriculum stages dotted)")
    ax.legend()
    fig.tight_layout()
    write_figure(path, fig, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmprompt.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ofa-nano")
    p.add_argument("--out", default=None, help="output directory (default runs/pretrain/<preset>-<id>/checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out as a whole")
    p.add_argument("--profile", default="cpu", choices=["ci", "cpu"])
    p.add_argument("--work-dir", default=None, help="stage checkpoints (default runs/pretrain/<preset>-<id>/stages)")
    p.add_argument("--data-dir", default=None, help="generated synthetic data (default: the profile's)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--resnet-warmup-steps", type=int, default=1000, help="0: no ResNet warm-up")
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-examples", type=int, default=256, help="validation examples of each evaluation")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = PretrainConfig(
            preset=a.preset, out=a.out, work_dir=a.work_dir, profile=a.profile, data_dir=a.data_dir,
            steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps, seed=a.seed,
            resnet_warmup_steps=a.resnet_warmup_steps,
            eval_every=a.eval_every, eval_examples=a.eval_examples, threads=a.threads, resume=a.resume, overwrite=a.overwrite,
        )
        print(pretrain(cfg))
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    except NonFiniteLossError as exc:
        logger.error("%s", exc)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
