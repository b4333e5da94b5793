"""Model cards for the shipped nano checkpoints, with the measurements that show they are worth tuning.

``python -m mmprompt.model_card data/checkpoints/ofa-nano [--transfer] [--methods] [--tasks …] [--profile cpu]``

* zero-shot scores on each downstream validation split;
* with ``--transfer``: at one equal budget per task, finetuning the pretrained checkpoint vs the same
  architecture from random initialisation, and prefix tuning vs zero-shot;
* with ``--methods``: the light-weight baselines (BitFit, Adapter, LoRA) at the same budget, beside prefix
  tuning and finetuning, with trainable parameters and wall time;
* every run is cached in ``tuning.json`` beside the card as soon as it ends, so an interrupted study
  resumes and the card can be rewritten without re-running anything (zero-shot scores are kept in
  ``zero_shot.json`` likewise; ``--rescore`` measures them again); each row records a fingerprint of the
  task's data (:func:`data_id`), so a row measured on data generated differently is measured again;
* perception: colour/shape/size/box accuracy of object listings (:mod:`mmprompt.nano.perception`);
* ``README.md`` written from ``config.json``, ``pretrain.json`` (steps, wall time, machine, curriculum)
  and the loss curve ``pretrain_loss.png``.

A checkpoint's card and study files describe one profile (and one ``--steps``): asked for another, the
command refuses before measuring anything (exit 2) and changes no file; copy the checkpoint directory to
measure it at another profile.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from mmprompt.core.checks import read_json
from mmprompt.core.atomic import write_json, write_text
from mmprompt.experiment.backbones import load_model
from mmprompt.data.synth import MANIFEST, file_sha256, read_manifest
from mmprompt.experiment.tune import resolve_data, tune
from mmprompt.nano.perception import FIELDS, grounding_by_objects, perception
from mmprompt.data.tasks import TASKS
from mmprompt.experiment.profiles import SPLITS, get_profile

logger = logging.getLogger(__name__)

TRANSFER_RUNS = (("zero-shot", True), ("prefix", True), ("finetune", True), ("finetune", False))
METHOD_RUNS = (("zero-shot", True), ("prefix", True), ("finetune", True), ("bitfit", True), ("adapter", True),
               ("lora", True))


def _label(method: str, pretrained: bool) -> str:
    return method if pretrained else f"{method} (random init)"


def _settings(profile: str, steps: int | None) -> dict:
    prof = get_profile(profile, steps=steps)
    return {"profile": profile, "steps": prof.steps, "batch_size": prof.batch_size,
            "eval_examples": prof.eval_examples}


def data_id(task: str, profile: str = "cpu", data_dir: Path | None = None) -> str:
    """Fingerprint of the data a row of ``task`` depends on (its train and validation files): 12 hex digits
    of a sha256 over the files' sha256 (from the synthetic data's manifest, else read from the files)."""
    root = resolve_data(get_profile(profile), data_dir)
    names = [f"{task}_{split}.tsv" for split in ("train", SPLITS[task][0])]
    if (root / MANIFEST).is_file():
        files = read_manifest(root)["files"]
        digests = [files[n]["sha256"] for n in names]
    else:
        digests = [file_sha256(root / n) for n in names]
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:12]


def current_rows(rows: list[dict], ids: dict[str, str]) -> list[dict]:
    """The rows measured on the data ``ids`` (task -> :func:`data_id`) describe."""
    return [r for r in rows if r["task"] in ids and r.get("data") == ids[r["task"]]]


def _stored_rows(path: Path | None, settings: dict) -> list[dict]:
    """Rows of the study file at ``path`` (none if it is absent); a file measured at other ``settings`` is
    refused, never replaced."""
    if path is None or not path.is_file():
        return []
    old = read_json(path, "study file")
    other = {k: old.get(k) for k, v in settings.items() if old.get(k) != v}
    if other:
        raise ValueError(f"{path} was measured at {other}, not {settings}; its rows would be replaced: allowed a "
                         "study file of the same settings or a new path")
    return old["rows"]


@contextmanager
def _locked(directory: Path):
    """Serialise read-merge-write of a study file between processes (a lock on its directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _record(path: Path, settings: dict, row: dict) -> None:
    """Merge ``row`` into the study file: it replaces the row of the same task, run and data only (rows
    measured on other data stay)."""
    key = ("task", "run", "data")
    with _locked(path.parent):
        rows = [r for r in _stored_rows(path, settings) if [r.get(k) for k in key] != [row[k] for k in key]]
        write_json(path, {**settings, "rows": rows + [row]})


def tuning_study(model_dir: Path, profile: str = "cpu", steps: int | None = None,
                 tasks: tuple[str, ...] = TASKS, data_dir: Path | None = None,
                 path: Path | None = None, zero: dict | None = None,
                 runs: tuple[tuple[str, bool], ...] = TRANSFER_RUNS) -> dict:
    """Score each (method, pretrained?) of ``runs`` on each task's validation split; returns a JSON-able dict.

    With ``path``, the study is resumable and can be split between processes (e.g. by ``tasks``): rows
    already in that file are kept (a file measured at other settings is refused), and each new row is merged into it
    atomically as soon as its run ends; rows measured on other data (:func:`data_id`) are run again.
    Zero-shot rows are taken from ``zero`` (:func:`zero_shot`'s result) where it was measured at the same
    profile on the same data.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks={unknown!r}; allowed: {list(TASKS)}")
    settings, rows = _settings(profile, steps), []  # rows: only when there is no file to keep them
    _stored_rows(path, settings)  # refuses before any work
    ids = {task: data_id(task, profile, data_dir) for task in tasks}

    def done() -> list[dict]:
        return rows if path is None else _stored_rows(path, settings)

    for task in tasks:
        for method, pretrained in dict.fromkeys(runs):
            label = _label(method, pretrained)
            if any(r["task"] == task and r["run"] == label for r in current_rows(done(), ids)):
                continue
            known = (zero or {}).get(task, {})
            if method == "zero-shot" and known.get("profile") == profile and known.get("data") == ids[task]:
                result = {"metric": known["metric"], "score": known["score"], "trainable": 0, "steps": 0,
                          "train_time_s": 0.0}
            else:
                backbone = load_model(model_dir, pretrained=pretrained)
                r = tune(backbone, task, method, profile=profile, steps=steps, data_dir=data_dir,
                         test_splits=False, progress=False)
                result = {"metric": r.metric, "score": r.score, "trainable": r.trainable, "steps": r.steps,
                          "train_time_s": r.train_time_s}
            logger.info("%s %s: %s=%.4f", task, label, result["metric"], result["score"])
            row = {"task": task, "run": label, "data": ids[task], **result}
            if path is None:
                rows.append(row)
            else:
                _record(path, settings, row)
    return {**settings, "rows": done()}


def zero_shot(model_dir: Path, profile: str = "cpu", data_dir: Path | None = None,
              tasks: tuple[str, ...] = TASKS) -> dict[str, dict]:
    """The checkpoint's untuned score on each task's validation split."""
    backbone = load_model(model_dir)
    out = {}
    for task in tasks:
        r = tune(backbone, task, "zero-shot", profile=profile, data_dir=data_dir, test_splits=False,
                 progress=False)
        out[task] = {"split": SPLITS[task][0], "metric": r.metric, "score": r.score, "profile": profile,
                     "data": data_id(task, profile, data_dir)}
    return out


def _fmt(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric == "cider" else f"{100 * value:.1f}"


def _cells(study: dict, task: str) -> dict[str, dict]:
    return {r["run"]: r for r in study["rows"] if r["task"] == task}


def transfer_table(study: dict) -> list[str]:
    """Markdown: one row per task, one column per transfer run (scores)."""
    runs = [_label(m, p) for m, p in TRANSFER_RUNS]
    lines = ["| task (metric) | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for task in TASKS:
        cells = _cells(study, task)
        if not any(r in cells for r in runs[1:]):
            continue
        metric = next(iter(cells.values()))["metric"]
        lines.append(f"| {task} ({metric}) | " + " | ".join(
            _fmt(cells[r]["score"], metric) if r in cells else "–" for r in runs) + " |")
    return lines


def methods_table(study: dict) -> list[str]:
    """Markdown: score, trainable parameters and training wall time of each method on each task."""
    runs = [_label(m, p) for m, p in METHOD_RUNS]
    lines = ["| task (metric) | method | score | trainable | train time (wall clock) |",
             "|---|---|---:|---:|---:|"]
    for task in TASKS:
        cells = _cells(study, task)
        if not any(r in cells for r in runs[3:]):
            continue
        for run in (r for r in runs if r in cells):
            c = cells[run]
            lines.append(f"| {task} ({c['metric']}) | {run} | {_fmt(c['score'], c['metric'])} | "
                         f"{c['trainable']:,} | {c['train_time_s'] / 60:.1f} min |")
    return lines


def write_card(model_dir: Path, zero: dict, study: dict | None, seen: dict | None = None) -> Path:
    """Write ``README.md`` for the checkpoint in ``model_dir``."""
    config = read_json(model_dir / "config.json", "config file")
    record = read_json(model_dir / "pretrain.json", "pretraining record")
    pc = record["config"]
    lines = [
        f"# {model_dir.name}",
        "",
        f"A nano OFA checkpoint pretrained by `mmprompt.nano.pretrain` on the synthetic world's pretraining mixture "
        f"(`{pc['profile']}` profile). The architecture is OFA's (preset `{pc['preset']}`): "
        f"{config['encoder_layers']}+{config['decoder_layers']} layers, d_model {config['d_model']}, "
        f"{config['encoder_attention_heads']} heads, {config['patch_image_size']}×{config['patch_image_size']} images, "
        f"vocabulary {config['vocab_size']}; {record['parameters']:,} parameters.",
        "",
        "## Pretraining",
        "- data: captioning, grounding, grounded captioning, image–text matching, VQA, object listing with boxes, "
        "text infilling (see `data/README.md`); curriculum by objects per scene:",
    ]
    for k, st in enumerate(record.get("stages", [])):
        lines.append(f"  - stage {k}: ≤ {st['max_objects']} objects, {st['examples']:,} examples, "
                     f"{st['steps']} steps, {st['wall_time_s'] / 60:.1f} min, val loss {st.get('val_loss', float('nan')):.3f}")
    if record.get("steps", pc["steps"]) != pc["steps"]:
        lines.append(f"  - (the stages ran {record['steps']} steps in all, not the configured {pc['steps']}: the run "
                     f"was resumed with a different `--steps`, and finished stages keep the steps they ran)")
    warm = record.get("resnet_warmup")
    if warm:
        acc = warm["val_accuracy"] or {}
        lines.append(f"- ResNet warm-up first (`mmprompt.nano.vision_warmup`, in place of OFA's ImageNet ResNet): "
                     f"{warm['steps']} steps, {warm['wall_time_s'] / 60:.1f} min; per-cell validation accuracy "
                     + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))
    machine = record["machine"]
    lines += [
        f"- {record.get('steps', '?')} steps at batch {pc['batch_size']}, AdamW lr {pc['lr']} (warmup "
        f"{pc['warmup_steps']}, constant, linear decay in the last stage), label smoothing 0.1, seed {pc['seed']}",
        f"- wall time {record.get('wall_time_s', 0) / 60:.0f} min on {machine['platform']} "
        f"({machine['torch_threads']} torch thread(s), 2-core machine shared with other jobs)",
        f"- reproduce: `python -m mmprompt.pretrain --preset {pc['preset']} --profile {pc['profile']} "
        f"--steps {pc['steps']} --lr {pc['lr']} --resnet-warmup-steps {pc.get('resnet_warmup_steps', 0)} "
        "--threads 1`",
        "",
        "![pretraining loss](pretrain_loss.png)",
        "",
        f"## Zero-shot (validation splits, `{next(iter(zero.values())).get('profile', '?')}` profile decoding)",
        "| task | split | metric | score |",
        "|---|---|---|---:|",
    ]
    lines += [f"| {t} | {z['split']} | {z['metric']} | {_fmt(z['score'], z['metric'])} |" for t, z in zero.items()]
    if seen:
        listing, grounding = seen["listing"], seen["grounding_by_objects"]
        lines += [
            "",
            "## Perception (pretraining validation split, greedy decoding"
            + (f", `{seen['profile']}` profile)" if "profile" in seen else ")"),
            f"Object listing of {listing['n']} one-object scenes, % named right (chance: size 50, colour 11 "
            "with *covered*, shape 17):",
            "",
            "| size | colour | shape | box IoU ≥ 0.5 |",
            "|---:|---:|---:|---:|",
            "| " + " | ".join(f"{100 * listing[k]:.1f}" for k in FIELDS) + " |",
            "",
            "Grounding (phrase → box) Acc@0.5 by objects in the scene (chance ≈ 100/n when every box is "
            "right):",
            "",
            "| objects | " + " | ".join(grounding) + " |",
            "|---|" + "---:|" * len(grounding),
            "| Acc@0.5 (rows) | " + " | ".join(f"{100 * g['acc']:.1f} ({g['n']})" for g in grounding.values())
            + " |",
            "",
            f"Measured by `python -m mmprompt.perception {model_dir}`.",
        ]
    if study:
        setting = (f"`{study['profile']}` profile: {study['steps']} steps at batch {study['batch_size']} for "
                   f"every trained run; validation split, ≤ {study['eval_examples']} examples")
        command = f"`python -m mmprompt.model_card {model_dir} --transfer --methods --profile {study['profile']}`"
        for title, table in (("Worth tuning?", transfer_table(study)), ("Tuning methods", methods_table(study))):
            if len(table) > 2:
                lines += ["", f"## {title} ({setting})", *table]
        lines += ["", f"Accuracies in %, CIDEr-D raw. Measured by {command}."]
    return write_text(model_dir / "README.md", "\n".join(lines) + "\n")


def measured_at(model_dir: Path, settings: dict) -> list[str]:
    """The study files of ``model_dir`` measured at other settings than ``settings`` (profile, steps …),
    each with what it was measured at; empty when the card may be (re)measured at ``settings``."""
    found = []
    zero_path, study_path, seen_path = (model_dir / n for n in ("zero_shot.json", "tuning.json", "perception.json"))
    zero = read_json(zero_path, "study file") if zero_path.is_file() else {}
    zero_profiles = sorted({z.get("profile") for z in zero.values()})
    if zero_profiles and zero_profiles != [settings["profile"]]:
        found.append(f"{zero_path.name} (profile {', '.join(map(str, zero_profiles))})")
    if study_path.is_file():
        study = read_json(study_path, "study file")
        other = {k: study.get(k) for k in settings if study.get(k) != settings[k]}
        if other:
            found.append(f"{study_path.name} ({', '.join(f'{k}={v!r}' for k, v in other.items())})")
    if seen_path.is_file():  # older files carry no profile: they were measured with zero_shot.json's
        profile = read_json(seen_path, "study file").get("profile", (zero_profiles or [None])[0])
        if profile not in (None, settings["profile"]):
            found.append(f"{seen_path.name} (profile {profile})")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmprompt.model_card", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--profile", default="cpu", choices=["ci", "cpu"])
    p.add_argument("--transfer", action="store_true", help="run the transfer study (resumes from tuning.json)")
    p.add_argument("--methods", action="store_true", help="run the light-weight baselines (BitFit, Adapter, LoRA)")
    p.add_argument("--steps", type=int, default=None, help="override the profile's tuning steps")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="tasks of the tuning study")
    p.add_argument("--rescore", action="store_true", help="re-measure zero-shot scores kept in zero_shot.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = _settings(a.profile, a.steps)
    other = measured_at(a.model_dir, settings)
    if other:
        logger.error("%s holds a study measured at other settings: %s; measuring at %s would replace it. Nothing "
                     "was changed; copy the checkpoint directory to measure it at these settings.", a.model_dir,
                     "; ".join(other), ", ".join(f"{k}={v!r}" for k, v in settings.items()))
        return 2
    zero_path, study_path = a.model_dir / "zero_shot.json", a.model_dir / "tuning.json"
    zero = read_json(zero_path, "study file") if zero_path.is_file() else {}
    ids = {task: data_id(task, a.profile) for task in TASKS}
    stale = tuple(t for t in TASKS if a.rescore or zero.get(t, {}).get("profile") != a.profile
                  or zero.get(t, {}).get("data") != ids[t])
    if stale:
        zero = {**zero, **zero_shot(a.model_dir, a.profile, tasks=stale)}
        write_json(zero_path, {t: zero[t] for t in TASKS})
    runs = (TRANSFER_RUNS if a.transfer else ()) + (METHOD_RUNS if a.methods else ())
    study = read_json(study_path, "study file") if study_path.is_file() else None
    if runs:
        study = tuning_study(a.model_dir, a.profile, a.steps, tuple(a.tasks), path=study_path, zero=zero, runs=runs)
    if study:
        study = {**study, "rows": current_rows(study["rows"], ids)}
    backbone = load_model(a.model_dir)
    seen = {"listing": perception(backbone, profile=a.profile),
            "grounding_by_objects": grounding_by_objects(backbone, profile=a.profile), "profile": a.profile}
    write_json(a.model_dir / "perception.json", seen)
    print(write_card(a.model_dir, zero, study, seen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
