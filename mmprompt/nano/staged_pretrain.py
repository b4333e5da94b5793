"""Staged, resumable pretraining of the v3 nano checkpoints on world v3's streamed mixture.

``python -m mmprompt.staged_pretrain --preset ofa-nano [--steps 8000] [--threads 1]`` (or, for all three sizes,
``scripts/pretrain_v3.sh``)

The run is a fixed plan of stages (:func:`default_plan`): a ResNet warm-up on per-cell attributes (in place
of OFA's ImageNet ResNet), one-object scenes, multi-object scenes with a grounding-heavy mixture, then the full
mixture (:data:`mmprompt.data.mixture.MIXTURES`). Every example is drawn on the fly, so no scene repeats.

Two levels of persistence make a multi-hour run survive interruption and a move to a fresh machine:

* inside a stage, the training loop's checkpoints (weights, optimizer, scheduler, RNG and data position)
  under ``<run_dir>/<k>-<stage>/last/`` resume it exactly; ``run_dir`` (default ``runs/pretrain-v3/<preset>``)
  is not committed;
* a finished stage is written small — fp16 safetensors, the OFA ``config.json`` and a ``stage.json``
  record — to ``<stage_dir>/<k>-<stage>/`` (default ``data/pretrain-stages/<preset>``), meant to be
  committed. Only the newest finished stage keeps its weights (older ones keep their record). A rerun skips
  the recorded stages and starts the next one from those weights, so a fresh clone continues where the
  committed stages end. Every stage starts from the stored fp16 weights, on the first machine too, so a
  moved run is the same run.

When the last stage is done the fp32 checkpoint (safetensors + config + tokenizer + ``pretrain.json`` + loss
curve) is written to ``<run_dir>/final`` — never into ``data/checkpoints/``. Rerun the same command to
continue; it does nothing but rewrite ``final`` once every stage is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from mmprompt.core.atomic import atomic_dir, write_json, write_text
from mmprompt.data import PretrainDataset, ensure_synthetic, load_tokenizer, split_path
from mmprompt.data.mixture import MIXTURES, MixtureStream
from mmprompt.models.ofa import PRESETS, OFAModel, save_pretrained
from mmprompt.nano.perception import grounding_by_objects
from mmprompt.nano.pretrain import plot_loss_curve, val_loss_fn
from mmprompt.nano.vision_warmup import warm_up_resnet
from mmprompt.training import TrainConfig, load_weights, train
from mmprompt.training.checkpoint import load_tensors, save_tensors

logger = logging.getLogger(__name__)

STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
STAGE_RECORD = "stage.json"
STAGE_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class StagePlan:
    """One stage: ``mixture`` (a key of ``MIXTURES``; None for the ResNet warm-up) for ``steps`` steps."""

    name: str
    mixture: str | None
    steps: int
    schedule: str = "constant"  # or "polynomial" (linear decay to 0; the last stage)


def default_plan(steps: int, resnet_steps: int) -> tuple[StagePlan, ...]:
    """ResNet warm-up, then 15 % one-object, 35 % grounding-heavy 2–4 objects, 50 % full mixture (1–6)."""
    one, multi = round(0.15 * steps), round(0.35 * steps)
    plan = [StagePlan("one-object", "one-object", one), StagePlan("grounding", "grounding", multi),
            StagePlan("full", "full", steps - one - multi, "polynomial")]
    return tuple(([StagePlan("resnet", None, resnet_steps)] if resnet_steps else []) + plan)


@dataclass
class StagedConfig:
    preset: str = "ofa-nano"
    steps: int = 8000  # transformer steps over all stages (the ResNet warm-up comes on top)
    resnet_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 300
    seed: int = 0
    image_size: int = 128  # patch_image_size: 128 px -> 8x8 = 64 patches (see data/README.md)
    profile: str = "cpu"
    data_dir: str | None = None  # a generated world-v3 directory; None: the profile's (generated once)
    run_dir: str | None = None  # default runs/pretrain-v3/<preset>
    stage_dir: str | None = None  # default data/pretrain-stages/<preset>
    eval_every: int = 500
    save_every: int = 100
    eval_examples: int = 256
    probe_examples: int = 600  # grounding rows of the validation split for the binding probe
    storage_dtype: str = "float16"
    threads: int | None = None
    plan: tuple[StagePlan, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}: allowed {sorted(PRESETS)}")
        if self.profile not in ("ci", "cpu"):
            raise ValueError(f"profile={self.profile!r}: allowed 'ci' or 'cpu'")
        for name in ("steps", "batch_size", "eval_every", "save_every", "eval_examples", "probe_examples",
                     "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an int >= 1")
        if isinstance(self.resnet_steps, bool) or not isinstance(self.resnet_steps, int) or self.resnet_steps < 0:
            raise ValueError(f"resnet_steps={self.resnet_steps!r}: must be an int >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: must be > 0")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype={self.storage_dtype!r}: allowed {tuple(STORAGE_DTYPES)}")
        if not self.plan:
            self.plan = default_plan(self.steps, self.resnet_steps)
        names = [s.name for s in self.plan]
        bad = [s for s in self.plan if (s.mixture is not None and s.mixture not in MIXTURES) or s.steps < 1]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"plan={self.plan!r}: stages need unique names, steps >= 1 and a mixture from "
                             f"{sorted(MIXTURES)} (or None for the ResNet warm-up)")
        first = next(s for s in self.plan if s.mixture is not None)
        if not 0 <= self.warmup_steps < first.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps!r}: must be >= 0 and shorter than the first stage")
        self.run_dir = self.run_dir or f"runs/pretrain-v3/{self.preset}"
        self.stage_dir = self.stage_dir or f"data/pretrain-stages/{self.preset}"


# ------------------------------------------------------------------ small stored weights


def small_state(model: OFAModel, dtype: str = "float16") -> dict[str, torch.Tensor]:
    """The model's state with floating tensors cast to ``dtype`` (ValueError when a value does not fit)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: allowed {tuple(STORAGE_DTYPES)}")
    out = {}
    for name, t in model.state_dict().items():
        small = t.detach().to(STORAGE_DTYPES[dtype]) if t.is_floating_point() else t.detach()
        if small.is_floating_point() and not torch.isfinite(small).all():
            raise ValueError(f"{name}: does not fit in {dtype}; use storage_dtype='bfloat16'")
        out[name] = small
    return out


def save_small_weights(model: OFAModel, directory: Path, dtype: str = "float16") -> Path:
    """``model.safetensors`` with floating tensors cast to ``dtype``, plus the OFA ``config.json`` (atomic
    files; :func:`run` writes a whole stage folder atomically)."""
    tensors = small_state(model, dtype)
    Path(directory).mkdir(parents=True, exist_ok=True)
    save_tensors(Path(directory) / STAGE_WEIGHTS, tensors)
    write_text(Path(directory) / "config.json", model.config.to_json_string())
    return Path(directory) / STAGE_WEIGHTS


def load_small_state(model: OFAModel, tensors: dict[str, torch.Tensor]) -> None:
    """Load fp16/bf16 tensors into ``model``, cast to its own dtypes (strict: every key must match)."""
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in tensors.items()})


def load_small_weights(model: OFAModel, path: Path) -> None:
    """Load the weights :func:`save_small_weights` wrote into ``model``."""
    load_small_state(model, load_tensors(path))


# ------------------------------------------------------------------ stages


def stage_folder(cfg: StagedConfig, k: int) -> Path:
    return Path(cfg.stage_dir) / f"{k}-{cfg.plan[k].name}"


def finished_stages(cfg: StagedConfig) -> list[dict]:
    """Records of the finished stages, in plan order (they must form a prefix of the plan)."""
    out = []
    for k, stage in enumerate(cfg.plan):
        path = stage_folder(cfg, k) / STAGE_RECORD
        if not path.is_file():
            break
        record = json.loads(path.read_text())
        if record["stage"]["name"] != stage.name or record["stage"]["steps"] != stage.steps:
            raise ValueError(f"{path}: recorded stage {record['stage']} differs from this plan's {asdict(stage)}; "
                             "use another stage_dir or the original plan")
        out.append(record)
    return out


def _val_fn(model: OFAModel, val: PretrainDataset, n: int, batch_size: int, probe):
    """The v2 validation loss plus the grounding probe's accuracy by number of objects."""
    val_loss = val_loss_fn(model, val, n, batch_size)

    def evaluate(_model) -> dict[str, float]:
        out = val_loss(_model)
        out.update({f"ground_{objs}obj": v["acc"] for objs, v in probe(200).items()})
        return out

    return evaluate


def _train_config(cfg: StagedConfig, k: int, stage: StagePlan, first: bool) -> TrainConfig:
    return TrainConfig(
        lr=cfg.lr, max_steps=stage.steps, batch_size=cfg.batch_size, seed=cfg.seed + k, schedule=stage.schedule,
        warmup_steps=cfg.warmup_steps if first else 0, warmup_ratio=0.0, eval_every=min(cfg.eval_every, stage.steps),
        save_every=min(cfg.save_every, stage.steps), metric=None, label_smoothing=0.1,
        out_dir=Path(cfg.run_dir) / f"{k}-{stage.name}", resume=True, device="cpu",
    )


def _run_stage(cfg: StagedConfig, k: int, model: OFAModel, tok, root: Path, evaluate) -> dict:
    stage = cfg.plan[k]
    size = model.config.patch_image_size
    if stage.mixture is None:
        data = MixtureStream(MIXTURES["listing"], tok, size, stage.steps * cfg.batch_size, seed=cfg.seed,
                             stream=f"train-{k}")
        val = PretrainDataset(split_path(root, "pretrain", "val"), tok, size, subtasks=["listing"])
        record = warm_up_resnet(model, data, val, steps=stage.steps, batch_size=cfg.batch_size, seed=cfg.seed)
        return {"steps": record["steps"], "wall_time_s": record["wall_time_s"], "final_metrics": record,
                "history": [], "resumed_from": "start of stage (the warm-up is short and not checkpointed)"}
    data = MixtureStream(MIXTURES[stage.mixture], tok, size, stage.steps * cfg.batch_size, seed=cfg.seed,
                         stream=f"train-{k}")
    first = k == next(i for i, s in enumerate(cfg.plan) if s.mixture is not None)
    tc = _train_config(cfg, k, stage, first)
    last = Path(tc.out_dir) / "last"
    resumed = f"run checkpoint {last}" if last.is_dir() else "start of stage"
    logger.info("stage %d (%s): %d steps of mixture %s; %s", k, stage.name, stage.steps, stage.mixture, resumed)
    result = train(model, data, tc, collate_fn=data.collater, eval_fn=evaluate)
    load_weights(model, result.last_checkpoint)  # a resumed, already finished stage returns at once
    return {"steps": result.steps, "wall_time_s": round(result.wall_time_s, 1), "final_metrics": result.final_metrics,
            "history": result.history, "resumed_from": resumed}


def _commit_stage(cfg: StagedConfig, k: int, model: OFAModel, info: dict, probe) -> dict:
    folder = stage_folder(cfg, k)
    load_small_state(model, small_state(model, cfg.storage_dtype))  # continue from what a fresh clone loads
    record = {
        "stage": asdict(cfg.plan[k]), "index": k, "preset": cfg.preset, **info,
        "grounding_by_objects": probe(cfg.probe_examples), "weights_dtype": cfg.storage_dtype,
        "parameters": model.num_parameters(), "config": {**asdict(cfg), "plan": [asdict(s) for s in cfg.plan]},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_dir(folder) as tmp:  # the record marks a finished stage: weights and record land together
        save_small_weights(model, tmp, cfg.storage_dtype)
        write_json(tmp / STAGE_RECORD, record)
    for j in range(k):  # only the newest stage keeps weights in the working tree (git keeps the rest)
        for name in (STAGE_WEIGHTS, "config.json"):
            (stage_folder(cfg, j) / name).unlink(missing_ok=True)
    logger.info("stage %d (%s) stored in %s: %s", k, cfg.plan[k].name, folder, record["grounding_by_objects"])
    return record


def build_model(cfg: StagedConfig, vocab_size: int) -> OFAModel:
    return OFAModel.from_preset(cfg.preset, seed=cfg.seed, vocab_size=vocab_size, patch_image_size=cfg.image_size)


def run(cfg: StagedConfig) -> Path:
    """Run (or continue) the plan; returns ``<run_dir>/final``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.data_dir) if cfg.data_dir else ensure_synthetic(cfg.profile, world="v3")
    tok = load_tokenizer(root / "tokenizer")
    model = build_model(cfg, len(tok))
    done = finished_stages(cfg)
    if done:
        weights = stage_folder(cfg, len(done) - 1) / STAGE_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the newest finished stage has no weights; restore it from git")
        load_small_weights(model, weights)
        logger.info("continuing after stage %d (%s) from %s", len(done) - 1, cfg.plan[len(done) - 1].name, weights)
    size = model.config.patch_image_size
    backbone = SimpleNamespace(model=model, tokenizer=tok, patch_image_size=size)

    def probe(n: int) -> dict:
        result = grounding_by_objects(backbone, root, examples=n, batch_size=cfg.batch_size)
        model.train()
        return result

    val = PretrainDataset(split_path(root, "pretrain", "val"), tok, size)
    evaluate = _val_fn(model, val, cfg.eval_examples, cfg.batch_size, probe)
    for k in range(len(done), len(cfg.plan)):
        info = _run_stage(cfg, k, model, tok, root, evaluate)
        info["continued_from"] = (f"stage {k - 1} ({cfg.plan[k - 1].name}) weights in {stage_folder(cfg, k - 1)}"
                                  if k else "random initialisation")
        done.append(_commit_stage(cfg, k, model, info, probe))
    return write_final(cfg, model, tok, root, done)


def write_final(cfg: StagedConfig, model: OFAModel, tok, root: Path, records: list[dict]) -> Path:
    out = Path(cfg.run_dir) / "final"
    save_pretrained(model, out)
    tok.save_pretrained(out)
    history = [dict(r, stage=rec["index"]) for rec in records for r in rec["history"]]
    write_json(out / "pretrain.json", {
        "config": records[-1]["config"], "data": str(root), "parameters": model.num_parameters(),
        "steps": sum(r["steps"] for r in records if r["stage"]["mixture"]),
        "wall_time_s": round(sum(r["wall_time_s"] for r in records), 1),
        "stages": [{k: v for k, v in r.items() if k not in ("history", "config")} for r in records],
        "history": history,
    })
    if history:
        plot_loss_curve(history, out / "pretrain_loss.png")
    logger.info("final checkpoint: %s", out)
    return out


def _binding(probe: dict) -> str:
    return " / ".join(f"{n}: {100 * v['acc']:.0f}" if isinstance(v, dict) else f"{n}: {100 * v:.0f}"
                      for n, v in probe.items())


def status(cfg: StagedConfig) -> str:
    """One line per stage: finished (steps, wall time, validation loss, grounding Acc@0.5 % by objects),
    in progress (the last evaluation of its run directory) or waiting."""
    done, lines = finished_stages(cfg), []
    for k, stage in enumerate(cfg.plan):
        head = f"{k}-{stage.name} ({stage.steps} steps)"
        if k < len(done):
            r = done[k]
            loss = r["final_metrics"].get("val_loss")
            lines.append(f"{head}: done in {r['wall_time_s'] / 60:.0f} min"
                         + (f", val loss {loss:.3f}" if loss is not None else "")
                         + f", grounding {_binding(r['grounding_by_objects'])}")
            continue
        metrics = Path(cfg.run_dir) / f"{k}-{stage.name}" / "metrics.jsonl"
        evals = [json.loads(x) for x in metrics.read_text().splitlines() if '"eval"' in x] if metrics.is_file() else []
        if evals:
            e = evals[-1]
            probe = {key[7:-3]: v for key, v in e.items() if key.startswith("ground_")}
            lines.append(f"{head}: running, step {e['step']}: val loss {e['val_loss']:.3f}, grounding {_binding(probe)}")
        else:
            lines.append(f"{head}: {'running' if metrics.is_file() else 'waiting'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mmprompt.staged_pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="ofa-nano")
    p.add_argument("--steps", type=int, default=8000, help="transformer steps over all stages")
    p.add_argument("--resnet-steps", type=int, default=1000, help="ResNet warm-up steps (0: none)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--profile", default="cpu", choices=["ci", "cpu"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--run-dir", default=None, help="loop checkpoints and final/ (default runs/pretrain-v3/<preset>)")
    p.add_argument("--stage-dir", default=None, help="finished stages (default data/pretrain-stages/<preset>)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--status", action="store_true", help="print where the run stands and exit")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = StagedConfig(preset=a.preset, steps=a.steps, resnet_steps=a.resnet_steps, batch_size=a.batch_size,
                       lr=a.lr, warmup_steps=a.warmup_steps, seed=a.seed, image_size=a.image_size, profile=a.profile,
                       data_dir=a.data_dir, run_dir=a.run_dir, stage_dir=a.stage_dir, eval_every=a.eval_every,
                       save_every=a.save_every, threads=a.threads)
    print(status(cfg) if a.status else run(cfg))


if __name__ == "__main__":
    main()
