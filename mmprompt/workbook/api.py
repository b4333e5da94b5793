"""Plumbing shared by the numbered notebooks: parameter rules, per-profile grids, sanity checks and the
metrics layout every notebook saves.

* :func:`start` is a notebook's one call at the top (check the parameters, load the backbone, open the
  run) and :meth:`Run.finish` its one call at the end (save the metrics);
* :func:`validate` checks a notebook's parameters (the common ones of :mod:`mmprompt.workbook.params` plus the
  workbook's knobs in :data:`RULES`) and raises ONE ``ValueError`` listing every bad value;
* :func:`grid` gives a sweep's points for a profile (2-3 points at ``ci``, the paper's grid otherwise);
* :func:`check_result` asserts what must hold for any tuning run (finite metrics in range, sane counts);
* :func:`results_dict` lays results out as ``{task: {variant: {split: main metric}}}``, the ``results``
  entry of every notebook's ``metrics.json`` that :mod:`mmprompt.workbook.reproduction` compares with the paper.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmprompt.core.checks import check_int
from mmprompt.data.tasks import TASKS
from mmprompt.tuning.registry import METHODS, trained_methods
from mmprompt.workbook.params import COMMON_RULES, PROFILES, RUN_DIR_PARAM, ParamRule, int_range, one_of, validate_params
from mmprompt.workbook.records import save_metrics

log = logging.getLogger(__name__)

__all__ = [
    "GRIDS", "RULES", "Run", "check_result", "checkpoint_card", "choice_list", "example_batch", "grid", "int_list",
    "findings_text", "show_findings", "start",
    "load_backbone",
    "model_source",
    "name_list", "non_empty_str", "number_list", "optional", "results_dict",
    "score_table", "validate",
]



# ------------------------------------------------------------------------------------------ rules
def optional(rule: ParamRule) -> ParamRule:
    """None, or a value ``rule`` accepts."""
    return ParamRule(lambda v: v is None or rule.check(v), f"None or {rule.allowed}")


def non_empty_str() -> ParamRule:
    return ParamRule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")


def _is_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) > 0


def int_list(lo: int = 1) -> ParamRule:
    """A non-empty list of distinct integers >= ``lo``."""
    return ParamRule(lambda v: _is_list(v) and len(set(v)) == len(v) and all(int_range(lo).check(x) for x in v),
                     f"a non-empty list of distinct integers >= {lo}")


def number_list(lo: float = 0.0) -> ParamRule:
    """A non-empty list of finite numbers >= ``lo``."""
    def ok(x: Any) -> bool:
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x >= lo

    return ParamRule(lambda v: _is_list(v) and all(ok(x) for x in v), f"a non-empty list of finite numbers >= {lo}")


def choice_list(*values: str) -> ParamRule:
    """A non-empty list of distinct values from ``values``."""
    return ParamRule(lambda v: _is_list(v) and len(set(v)) == len(v) and all(x in values for x in v),
                     "a non-empty list of distinct values from " + ", ".join(map(repr, values)))


def name_list() -> ParamRule:
    """A non-empty list of distinct non-empty strings (backbone names or model directories)."""
    return ParamRule(lambda v: _is_list(v) and len(set(v)) == len(v) and all(non_empty_str().check(x) for x in v),
                     "a non-empty list of distinct backbone names or model directories")


#: The workbook's own notebook knobs (the common ones live in :data:`mmprompt.workbook.params.COMMON_RULES`).
RULES: dict[str, ParamRule] = {
    "backbone": non_empty_str(),
    "backbones": optional(name_list()),
    "length": int_range(1),
    "lengths": optional(int_list(1)),
    "depth": optional(int_range(1)),
    "depth_from": one_of("bottom", "top"),
    "hidden": optional(int_range(1)),
    "epsilons": optional(number_list(0.0)),
    "space": one_of("embeds", "image_embeds", "text_embeds", "pixels"),
    "methods": optional(choice_list(*METHODS)),
    "tasks": optional(choice_list(*TASKS)),
    "steps": optional(int_range(1)),
    "examples": int_range(1),
    "runs_root": optional(non_empty_str()),
}


def validate(rules: Mapping[str, ParamRule] | None = None, /, **params: Any) -> dict[str, Any]:
    """Check a notebook's parameters before any work: the common rules, :data:`RULES`, then ``rules``
    (notebook-specific overrides, e.g. ``{"depth": int_range(1, 6)}``), plus one cross-check: the ``gpu``
    profile needs ``data_dir`` (real data). Raises ONE ``ValueError`` listing every problem."""
    problems = []
    try:
        validate_params({**RULES, **(rules or {})}, **params)
    except ValueError as exc:
        problems += str(exc).splitlines()[1:]
    if params.get("profile") == "gpu" and "data_dir" in params and params["data_dir"] is None:
        problems.append("  data_dir=None (allowed with profile='gpu': a directory of real data in OFA's TSV "
                        "layout; the synthetic world is for the ci and cpu profiles)")
    if problems:
        raise ValueError("invalid notebook parameter(s):\n" + "\n".join(problems))
    return dict(params)


#: What each profile is for, as :func:`start` tells the reader.
PROFILE_NOTES = {
    "ci": "a smoke test: a few training steps on a few examples, seconds per run; numbers are not findings",
    "cpu": "the small-scale study: hundreds of steps per run on the synthetic world, minutes per run",
    "gpu": "the paper's recipe on real data",
}


@dataclass
class Run:
    """What :func:`start` opened: the checked parameters, the backbone (None when not loaded) and where the
    run's ``metrics.json`` goes (``run_dir``, set by the papermill runner; None in an interactive session)."""

    params: dict[str, Any]
    backbone: Any = None

    @property
    def common(self) -> dict[str, Any]:
        """The keyword arguments every :func:`mmprompt.tune` call of the notebook shares."""
        return {k: self.params[k] for k in ("profile", "data_dir", "seed") if k in self.params}

    def finish(self, metrics: Mapping[str, Any]) -> None:
        """Save ``metrics`` (plus the run's parameters that are not in it) to ``<run_dir>/metrics.json``; in
        an interactive session (no ``run_dir``) only check that they are JSON-able."""
        extra = {k: v for k, v in self.params.items() if k not in (RUN_DIR_PARAM, "model_dir", "data_dir")}
        save_metrics({**extra, **metrics}, self.params.get(RUN_DIR_PARAM))


def start(namespace: Mapping[str, Any], rules: Mapping[str, ParamRule] | None = None, *,
          load: bool = True) -> Run:
    """A notebook's one call at the top: pick its parameters out of ``namespace`` (``globals()`` after the
    parameters cell; the names the workbook has rules for), check them with :func:`validate` (ONE
    ``ValueError`` listing every bad value, before any work), load the backbone (unless ``load`` is False)
    and return the :class:`Run`, after one line saying what runs."""
    from IPython.display import Markdown, display

    known = {*COMMON_RULES, *RULES, *(rules or {})}
    params = validate(rules, **{k: v for k, v in namespace.items() if k in known})
    run = Run(params)
    if load and "backbone" in params:
        run.backbone = load_backbone(params["backbone"], params.get("model_dir"), params["profile"],
                                     params.get("seed", 0))
    what = [f"**{run.backbone.name if run.backbone is not None else params.get('backbone', 'mmprompt')}**"]
    if "task" in params:
        what.append(f"task **{params['task']}**")
    profile = params.get("profile", "ci")
    display(Markdown(" · ".join(what) + f" · profile **{profile}** ({PROFILE_NOTES[profile]})"
                     + f" · seed {params.get('seed', 0)}"))
    return run


def findings_text(profile: str, sentences: Sequence[str]) -> str:
    """Markdown of a notebook's findings: a heading, then one bullet per sentence (what was measured), each
    prefixed like a verdict at a smoke profile (``ci``: a few steps, numbers that show the code runs, not
    results). Comparisons are stated by :func:`mmprompt.workbook.findings.show_finding`, not here."""
    from mmprompt.eval.stats import SMOKE_PREFIX, SMOKE_PROFILES

    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: allowed {PROFILES}")
    if not sentences or not all(isinstance(x, str) and x.strip() for x in sentences):
        raise ValueError(f"sentences={sentences!r}: need at least one non-empty sentence")
    prefix = SMOKE_PREFIX if profile in SMOKE_PROFILES else ""
    return "### What this run found\n\n" + "\n".join(f"- {prefix}{x.strip()}" for x in sentences)


def show_findings(profile: str, sentences: Sequence[str]) -> None:
    """Display :func:`findings_text` as Markdown (the notebook's findings cell)."""
    from IPython.display import Markdown, display

    display(Markdown(findings_text(profile, sentences)))


def model_source(backbone: str, model_dir: str | os.PathLike | None) -> str:
    """What :func:`mmprompt.load_model` should load: ``model_dir`` (a local OFA or Florence-2 directory)
    when given, else the shipped ``backbone`` name."""
    return os.fspath(model_dir) if model_dir is not None else backbone


def load_backbone(backbone: str, model_dir: str | os.PathLike | None, profile: str, seed: int = 0):
    """:func:`mmprompt.load_model` of :func:`model_source` on the profile's device (``cuda`` for ``gpu``), so
    that zero-shot evaluation and every measurement run where the tuned models do."""
    from mmprompt.experiment.backbones import load_model
    from mmprompt.experiment.profiles import get_profile

    return load_model(model_source(backbone, model_dir), device=get_profile(profile).device, seed=seed)


def example_batch(backbone, task: str, profile: str, data_dir: str | os.PathLike | None = None, n: int = 4) -> dict:
    """The first ``n`` validation examples of ``task`` collated into one batch on the backbone's device."""
    import torch

    from mmprompt.experiment.profiles import SPLITS, get_profile
    from mmprompt.experiment.tune import resolve_data, split_dataset

    check_int("n", n, 1)
    prof = get_profile(profile)
    dataset = split_dataset(backbone, task, resolve_data(prof, data_dir), SPLITS[task][0], prof)
    batch = dataset.collater([dataset[i] for i in range(min(n, len(dataset)))])
    device = next(backbone.model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------ grids
_PAPER_LENGTHS = (10, 16, 32, 64, 100, 120)
#: Every registered light-weight method, then finetuning (the reference they are measured against).
_LIGHT_THEN_FINETUNE = (*(m for m in trained_methods() if m != "finetune"), "finetune")
#: Sweep points per profile. ``ci`` keeps 2-3 points so every notebook runs in about a minute; ``cpu`` and
#: ``gpu`` use the paper's grid (prompt lengths 10-120 and beyond).
GRIDS: dict[str, dict[str, tuple]] = {
    "lengths": {"ci": (8, 64), "cpu": (*_PAPER_LENGTHS, 200), "gpu": (*_PAPER_LENGTHS, 200)},
    "epsilons": {"ci": (0.05, 0.25), "cpu": (0.01, 0.02, 0.05, 0.1, 0.2, 0.4),
                 "gpu": (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)},
    "methods": {"ci": ("zero-shot", "prefix", "finetune"), "cpu": ("zero-shot", "prefix", "finetune"),
                "gpu": ("prefix", "finetune")},
    "light_methods": {"ci": _LIGHT_THEN_FINETUNE, "cpu": _LIGHT_THEN_FINETUNE, "gpu": _LIGHT_THEN_FINETUNE},
    "efficiency_methods": {"ci": ("prefix", "finetune"), "cpu": _LIGHT_THEN_FINETUNE, "gpu": _LIGHT_THEN_FINETUNE},
    "backbones": {"ci": ("ofa-nano-small", "ofa-nano"), "cpu": ("ofa-nano-small", "ofa-nano"),
                  "gpu": ("ofa-nano-small", "ofa-nano")},
    "pretrain_steps": {"ci": (6,), "cpu": (600,), "gpu": (600,)},
}


def grid(name: str, profile: str, value: Sequence | None = None) -> tuple:
    """``value`` when given (a notebook parameter overriding the sweep), else the profile's points."""
    if name not in GRIDS:
        raise ValueError(f"grid name={name!r}: allowed {sorted(GRIDS)}")
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: allowed {PROFILES}")
    return tuple(value) if value is not None else GRIDS[name][profile]


# ------------------------------------------------------------------------------------------ checks
#: Upper bound of each task's headline metric (CIDEr-D can exceed 1).
_METRIC_MAX = {"acc@0.5": 1.0, "accuracy": 1.0, "cider": 10.0}


def check_result(result) -> None:
    """Assert what holds for any tuning run, however short: every split's headline metric is finite and in
    range, the trainable count is positive for a training method (0 for zero-shot) and below the total,
    and recorded training losses are finite. Raises ``AssertionError`` naming the problem."""
    name = f"{result.task}/{result.method}"
    hi = _METRIC_MAX.get(result.metric, math.inf)
    for split, values in result.metrics.items():
        value = values.get(result.metric)
        assert isinstance(value, numbers.Real) and math.isfinite(value) and 0.0 <= value <= hi, (
            f"{name}: {split} {result.metric}={value!r} is not a finite number in [0, {hi}]")
    if result.method == "zero-shot":
        assert result.trainable == 0, f"{name}: zero-shot reports {result.trainable} trainable parameters"
    else:
        assert 0 < result.trainable <= result.total, f"{name}: trainable={result.trainable}, total={result.total}"
        losses = [r["loss"] for r in result.history if r.get("event") == "train" and "loss" in r]
        assert losses and all(math.isfinite(x) for x in losses), f"{name}: training losses {losses[:5]}..."


def check_learned(name: str, profile: str, score: float, zero_score: float, loss: float, zero_loss: float) -> None:
    """The check each notebook makes of a tuned model against zero-shot (raises ``AssertionError``).

    At ``ci`` (a few steps) tuning must have changed the held-out loss, which stays finite: a fresh prefix
    first dilutes attention, so it cannot be expected to beat zero-shot yet. At ``cpu``/``gpu`` the
    validation score must beat zero-shot's. The held-out loss is reported there, not asserted: it follows
    the score only loosely (prefix-tuned ``ofa-nano`` on REC: Acc@0.5 26.4 -> 28.2 while the box tokens'
    cross-entropy went 1.579 -> 1.592, a near-miss bin costing as much as a far one)."""
    assert math.isfinite(loss), f"{name}: held-out loss {loss!r}"
    if profile == "ci":
        assert loss != zero_loss, f"{name}: tuning left the held-out loss unchanged ({loss})"
    else:
        assert score > zero_score, f"{name}: score {score:.4f} does not beat zero-shot ({zero_score:.4f})"


def _pairs(results: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    pairs = list(results.items()) if isinstance(results, Mapping) else list(results)
    for label, _ in pairs:
        if not isinstance(label, str) or not label or "." in label:
            raise ValueError(f"label={label!r}: must be a non-empty string without dots (metrics keys are dotted)")
    return pairs


def results_dict(results: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {label: {split: headline metric}}}`` from ``{label: TuneResult}`` or ``(label, TuneResult)``
    pairs (the layout of the ``results`` entry of every notebook's ``metrics.json``)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, r in _pairs(results):
        out.setdefault(r.task, {})[label] = {s: float(m[r.metric]) for s, m in r.metrics.items()}
    return out


def score_table(results: Mapping[str, Any] | Iterable[tuple[str, Any]],
                extra: Mapping[str, Sequence[Any]] | None = None):
    """A DataFrame of headline metrics on the paper's scale (x100): one row per label, columns
    (task, split, metric) like the paper's tables; ``extra`` adds columns (name -> one value per row),
    read back as ``table[name]``."""
    import pandas as pd

    rows: dict[str, dict[tuple[str, str, str], float]] = {}
    for label, r in _pairs(results):
        row = rows.setdefault(label, {})
        for split, m in r.metrics.items():
            row[(r.task, split, r.metric)] = 100.0 * float(m[r.metric])
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["task", "split", "metric"])
    for name, values in (extra or {}).items():
        if len(values) != len(frame):
            raise ValueError(f"extra column {name!r} has {len(values)} values for {len(frame)} rows")
        frame[(name, "", "")] = list(values)
    return frame


# ------------------------------------------------------------------------------------------ misc
def checkpoint_card(directory: str | os.PathLike) -> dict[str, Any]:
    """Facts about a checkpoint directory (``config.json`` + ``pretrain.json`` when present): size,
    architecture, pretraining recipe and cost."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"directory={str(directory)!r} has no config.json")
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    card: dict[str, Any] = {"name": cfg.get("name", directory.name), "model_type": cfg.get("model_type")}
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                "patch_image_size", "vocab_size", "resnet_layers"):
        if key in cfg:
            card[key] = cfg[key]
    record_path = directory / "pretrain.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        recipe = record.get("config", {})
        card["parameters"] = record.get("parameters")
        for key in ("steps", "batch_size", "lr", "warmup_steps", "profile", "seed"):
            card[f"pretrain_{key}"] = recipe.get(key)
        card["pretrain_stages"] = [f"<= {s['max_objects']} objects: {s['fraction']:.0%}"
                                   for s in recipe.get("stages", [])]
        if record.get("steps") is not None:  # steps actually run (a record may stop short of the recipe)
            card["pretrain_steps"] = record["steps"]
        # wall_time_s: the whole pretraining; older records only kept the last session's time
        card["pretrain_wall_time_s"] = record.get("wall_time_s", record.get("wall_time_s_this_session"))
        card["pretrain_machine"] = record.get("machine", {}).get("platform")
    return card
