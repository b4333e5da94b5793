"""Run profiles: one parameter that sets data, budget and decoding everywhere.

| profile | data | budget | purpose |
|---|---|---|---|
| ``ci``  | synthetic ``ci`` splits | 8 steps, 16 scored examples per split | every notebook cell runs in CI |
| ``cpu`` | synthetic ``cpu`` splits | hundreds of steps, full validation splits | the small-scale study |
| ``gpu`` | real data in OFA's TSV layout (``data_dir``) | the paper's recipe (epochs, batch, lr) | the reproduction |

The ``gpu`` profile's recipe depends on the task, the method and the model size:
:func:`resolve_profile` fills it in from :data:`GPU_TASK_DEFAULTS`; the ``ci`` and ``cpu`` profiles are the
same for every task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from mmprompt.data.tasks import TASK_SPECS
from mmprompt.tuning.baselines import FinetuneConfig
from mmprompt.tuning.registry import learning_rates, method_spec, trained_methods

#: Learning rates per method on the nano backbones (ci/cpu profiles) and in the paper's recipe (gpu profile),
#: from the method registry (where their sources are cited).
NANO_LR = learning_rates("nano")
GPU_LR = learning_rates("gpu")

#: Validation split and test splits of each task (from the task registry).
SPLITS = {name: (spec.val_split, spec.test_splits) for name, spec in TASK_SPECS.items()}
CONVENTIONS = ("nano", "ofa")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Profile:
    name: str
    data_profile: str | None  # synthetic profile to generate, or None (real data from data_dir)
    steps: int | None  # optimizer steps per tuning run (None: use epochs)
    epochs: int | None
    batch_size: int
    eval_examples: int | None  # cap on evaluated examples per split (None: all)
    eval_every: int | None
    beam_size: int
    lr: dict[str, float] = field(default_factory=dict)
    amp: str = "none"
    device: str = "cpu"
    threads: int | None = None
    # -- the training recipe (defaults: what the ci/cpu profiles always used) --
    effective_batch_size: int | None = None  # examples per optimizer step over all ranks; None: batch_size x ranks
    label_smoothing: float = 0.1
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None  # overrides warmup_ratio
    ema_decay: float | None = None
    image_size: int | None = None  # None: the backbone's patch_image_size
    prompt_length: int = 64  # length of a prefix / shallow prompt given by method name
    freeze_token_embeddings: bool = False  # finetuning given by method name (OFA: VQA and captioning)
    num_workers: int = 0  # DataLoader workers of the training loop
    eval_batch_size: int | None = None  # examples per decoding batch (per rank); None: EvalSettings' default
    tf32: bool = False  # allow TF32 matmuls/convolutions on CUDA while tuning
    # -- reading real data (mmprompt.data.ofa_files) --
    convention: str = "nano"  # "ofa": OFA's box bins (max_image_size 512), VQA confidence weights, kept
    #                           out-of-list answers, caption ids from image_id, VQA test -> submission JSON
    add_object: bool = False  # VQA: OFA's --add-object (" object: ..." appended to the question)
    drop_path_rate: float | None = None  # OFA models' encoder/decoder drop-path; None: the checkpoint's
    drop_worst_ratio: float = 0.0  # OFA's caption stage 1: drop this share of the worst target tokens ...
    drop_worst_after: int = 0  # ... after this many updates
    patience: int | None = None  # stop after this many validations without improvement (None: full budget)
    save_every: int | None = None  # steps between resume points (None: at each evaluation and at the end)

    def __post_init__(self) -> None:
        checks = (
            ("batch_size", self.batch_size, lambda v: _int(v) and v >= 1, "an integer >= 1"),
            ("effective_batch_size", self.effective_batch_size, lambda v: v is None or (_int(v) and v >= 1),
             "None or an integer >= 1"),
            ("label_smoothing", self.label_smoothing, lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
            ("warmup_ratio", self.warmup_ratio, lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
            ("warmup_steps", self.warmup_steps, lambda v: v is None or (_int(v) and v >= 0), "None or an integer >= 0"),
            ("ema_decay", self.ema_decay, lambda v: v is None or (_num(v) and 0 < v < 1), "None or a number in (0, 1)"),
            ("image_size", self.image_size, lambda v: v is None or (_int(v) and v >= 16), "None or an integer >= 16"),
            ("prompt_length", self.prompt_length, lambda v: _int(v) and v >= 1, "an integer >= 1"),
            ("num_workers", self.num_workers, lambda v: _int(v) and v >= 0, "an integer >= 0"),
            ("eval_batch_size", self.eval_batch_size, lambda v: v is None or (_int(v) and v >= 1),
             "None or an integer >= 1"),
            ("convention", self.convention, lambda v: v in CONVENTIONS, f"one of {CONVENTIONS}"),
            ("drop_path_rate", self.drop_path_rate, lambda v: v is None or (_num(v) and 0 <= v < 1),
             "None or a number in [0, 1)"),
            ("drop_worst_ratio", self.drop_worst_ratio, lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
            ("drop_worst_after", self.drop_worst_after, lambda v: _int(v) and v >= 0, "an integer >= 0"),
            ("patience", self.patience, lambda v: v is None or (_int(v) and v >= 1), "None or an integer >= 1"),
            ("save_every", self.save_every, lambda v: v is None or (_int(v) and v >= 1), "None or an integer >= 1"),
        )
        for name, value, ok, allowed in checks:
            if not ok(value):
                raise ValueError(f"profile {self.name!r}: {name}={value!r}; allowed: {allowed}")

    def lr_for(self, family: str) -> float:
        return self.lr[family]

    def grad_accum(self, world_size: int = 1) -> int:
        """Micro-batches per optimizer step so that ``batch_size x grad_accum x world_size`` reaches
        ``effective_batch_size`` (rounded up; 1 when it is None)."""
        if self.effective_batch_size is None:
            return 1
        return max(1, math.ceil(self.effective_batch_size / (self.batch_size * max(1, world_size))))


PROFILES: dict[str, Profile] = {
    # ci: every notebook cell must run in CI on two shared CPU cores, 11 notebooks in a few minutes, so a
    # tuning run is 8 steps of 8 examples scored on 16 examples per split (~3-5 s on ofa-nano); the
    # notebooks only assert at ci what holds even then (finite metrics, formulas, equivalences, lower
    # held-out loss) and gate the stronger claims on the cpu/gpu profiles.
    "ci": Profile("ci", "ci", steps=8, epochs=None, batch_size=8, eval_examples=16, eval_every=None,
                  beam_size=2, lr=NANO_LR),
    "cpu": Profile("cpu", "cpu", steps=600, epochs=None, batch_size=32, eval_examples=500, eval_every=200,
                   beam_size=5, lr=NANO_LR),
    "gpu": Profile("gpu", None, steps=None, epochs=40, batch_size=16, eval_examples=None, eval_every=None,
                   beam_size=5, lr=GPU_LR, amp="bf16", device="cuda", effective_batch_size=128, image_size=480,
                   num_workers=4, tf32=True, convention="ofa", save_every=500),
}

#: The ``gpu`` profile per task: :class:`Profile` field values for the prompt-style methods (``"prompt"``:
#: prefix, shallow prompt, BitFit, Adapter, LoRA — OFA's Adapter and BitFit scripts are its prefix script
#: with other flags) and for finetuning (``"finetune"``); ``"<kind>@<size>"`` entries override them for one
#: OFA size (sizes are read off the backbone's shape). ``lr`` is the rate of the prefix / shallow prompt
#: (``"prompt"``) or of finetuning; BitFit, Adapter and LoRA keep :data:`GPU_LR`. ``batch_size`` is per GPU;
#: ``effective_batch_size`` is reached with gradient accumulation. Sources (see
#: ``reference/paper-and-ofa.md`` sections 4-5): the paper's Appendix A.1 (prompt tuning: lr 0.03, batch 128
#: for RefCOCO/SNLI-VE and 256 for COCO/VQA, prompt length 64 recommended, EMA 0.9999 for VQA), OFA's
#: ``train_refcoco_prefix.sh`` (100 epochs, warmup 0.06, label smoothing 0.1, 480 px, validation every 500
#: updates, beam 5) and OFA's finetuning scripts. UNCONFIRMED, chosen here: prompt-tuning epochs other than
#: RefCOCO's (estimated from the paper's Table 5 GPU-hours, assuming a prompt-tuning sample costs ~0.6x a
#: finetuning one), per-GPU micro-batches, and validation intervals other than RefCOCO's.
#:
#: Paper vs OFA's prompt-tuning script (``run_scripts/refcoco/train_refcoco_prefix.sh``, branch
#: feature/prompt_tuning) — where they differ the paper is the default and the script is the named recipe
#: ``"ofa-refcoco-prefix-script"`` (:data:`RECIPES`, ``tune(..., recipe="ofa-refcoco-prefix-script")``):
#:
#: =====================  =========================================  ==========================================
#: setting                default (source)                           OFA's script
#: =====================  =========================================  ==========================================
#: prompt length          64 (paper §4.3, Table 6: recommended)      100 encoder and decoder
#: effective batch        128 RefCOCO/SNLI-VE, 256 COCO/VQA (A.1)    1024 (16 x update_freq 8 x 8 GPUs)
#: learning rate          0.03 (A.1)                                 sweep {0.03, 5e-5, 1e-4}
#: epochs                 100 RefCOCO (script; paper: ">= 40")       100
#: drop-path              0.2 (script; the paper is silent)          0.2
#: label smoothing        0.1 (script)                               0.1
#: warmup                 0.06 (script)                              0.06
#: image size             480 (script loop; header says 512)         480
#: box bins               max_image_size 512 (OFA's RefCOCO task)    512
#: VQA objects            --add-object (OFA's VQA script)            (VQA not scripted for prompts)
#: =====================  =========================================  ==========================================
GPU_TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "refcoco": {
        "prompt": dict(epochs=100, effective_batch_size=128, batch_size=16, lr=3e-2, label_smoothing=0.1,
                       warmup_ratio=0.06, image_size=480, beam_size=5, prompt_length=64, eval_every=500,
                       drop_path_rate=0.2),
        "finetune": dict(epochs=10, effective_batch_size=128, batch_size=8, lr=3e-5, label_smoothing=0.1,
                         warmup_ratio=0.06, image_size=512, beam_size=5, eval_every=500, drop_path_rate=0.2),
        "finetune@base": dict(lr=5e-5, drop_path_rate=0.1),
    },
    "snli_ve": {
        "prompt": dict(epochs=20, effective_batch_size=128, batch_size=16, lr=3e-2, label_smoothing=0.1,
                       warmup_ratio=0.06, image_size=480, beam_size=5, prompt_length=64, eval_every=2000,
                       drop_path_rate=0.2),
        "finetune": dict(epochs=6, effective_batch_size=256, batch_size=8, lr=2e-5, label_smoothing=0.0,
                         warmup_ratio=0.06, image_size=480, beam_size=5, eval_every=2000, drop_path_rate=0.2),
        "finetune@base": dict(epochs=5, lr=5e-5, drop_path_rate=0.1),
    },
    "caption": {
        "prompt": dict(epochs=5, effective_batch_size=256, batch_size=16, lr=3e-2, label_smoothing=0.1,
                       warmup_ratio=0.06, image_size=480, beam_size=5, prompt_length=64, eval_every=1000,
                       drop_path_rate=0.1),
        "finetune": dict(epochs=2, effective_batch_size=128, batch_size=8, lr=1e-5, label_smoothing=0.1,
                         warmup_ratio=0.06, image_size=480, beam_size=5, eval_every=1000,
                         freeze_token_embeddings=True, drop_path_rate=0.1, drop_worst_ratio=0.2,
                         drop_worst_after=2500),
        "finetune@base": dict(epochs=5),
    },
    "vqa": {
        "prompt": dict(epochs=40, effective_batch_size=256, batch_size=16, lr=3e-2, label_smoothing=0.1,
                       warmup_ratio=0.06, image_size=480, beam_size=5, prompt_length=64, eval_every=None,
                       ema_decay=0.9999, add_object=True, drop_path_rate=0.2),
        "finetune": dict(steps=40_000, epochs=None, warmup_steps=1000, effective_batch_size=512, batch_size=8,
                         lr=5e-5, label_smoothing=0.1, image_size=480, beam_size=5, eval_every=None,
                         ema_decay=0.9999, freeze_token_embeddings=True, add_object=True, drop_path_rate=0.2),
        "finetune@base": dict(steps=None, epochs=15, warmup_steps=None, warmup_ratio=0.04, drop_path_rate=0.1),
    },
}
#: Methods that take the gpu recipe's "prompt" entry (every trained method but finetuning).
PROMPT_FAMILIES = tuple(m for m in trained_methods() if m != FinetuneConfig.method)

#: Named recipes (Profile field values applied over the gpu profile's task recipe): OFA's own scripts.
RECIPES: dict[str, dict[str, Any]] = {
    # run_scripts/refcoco/train_refcoco_prefix.sh (also its _adapter/_bitfit twins): P=100, 16 x 8 x 8 GPUs,
    # 100 epochs, first lr of the sweep {0.03, 5e-5, 1e-4}, drop-path 0.2, 480 px, validation every 500 updates
    "ofa-refcoco-prefix-script": dict(prompt_length=100, effective_batch_size=1024, batch_size=16, epochs=100,
                                      lr=3e-2, drop_path_rate=0.2, image_size=480, eval_every=500,
                                      label_smoothing=0.1, warmup_ratio=0.06, beam_size=5),
}


#: ``tune(..., budget=...)``: ``"fixed"`` is the profile's own budget; ``"converge"`` a budget to convergence:
#: a step cap well above the fixed budget, validation every ``eval_every`` steps, and early stopping after
#: ``patience`` validations without improvement (the best checkpoint is restored). The paper trains prompt
#: tuning for many more epochs than finetuning; this lets every method run until its validation score stops
#: rising instead of giving all of them the same steps.
BUDGETS: tuple[str, ...] = ("fixed", "converge")
CONVERGE: dict[str, dict[str, Any]] = {
    "ci": dict(steps=24, eval_every=8, patience=1),
    "cpu": dict(steps=3000, eval_every=200, patience=3),
}


def budget_overrides(profile: str, budget: str) -> dict[str, Any]:
    """The Profile fields that ``budget`` sets on ``profile`` (none for ``"fixed"``)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}: allowed {BUDGETS}")
    if budget == "fixed":
        return {}
    if profile not in CONVERGE:
        raise ValueError(f"budget='converge' is defined for the profiles {sorted(CONVERGE)}, not {profile!r}; "
                         "the gpu profile trains the paper's epochs (give recipe={'patience': N} to stop early)")
    return dict(CONVERGE[profile])


def named_recipe(name: str) -> dict[str, Any]:
    """A copy of :data:`RECIPES` ``[name]``."""
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r}: allowed a dict of profile fields or one of {sorted(RECIPES)}")
    return dict(RECIPES[name])


def get_profile(name: str, **overrides) -> Profile:
    """The named profile, with fields replaced by ``overrides`` (None values are ignored)."""
    if name not in PROFILES:
        raise ValueError(f"profile={name!r}: allowed {sorted(PROFILES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - set(Profile.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; allowed {sorted(Profile.__dataclass_fields__)}")
    return replace(PROFILES[name], **changes)


def gpu_recipe(task: str, family: str, size: str | None = None) -> dict[str, Any]:
    """The :data:`GPU_TASK_DEFAULTS` entry of ``task`` for a method family (and OFA size), as Profile fields."""
    if task not in GPU_TASK_DEFAULTS:
        raise ValueError(f"task={task!r}: allowed {tuple(GPU_TASK_DEFAULTS)}")
    if family not in (*PROMPT_FAMILIES, "finetune"):
        raise ValueError(f"family={family!r}: allowed {(*PROMPT_FAMILIES, 'finetune')}")
    kind = "finetune" if family == "finetune" else "prompt"
    entries = GPU_TASK_DEFAULTS[task]
    fields = {**entries[kind], **(entries.get(f"{kind}@{size}", {}) if size else {})}
    lr = fields.pop("lr", None)
    if lr is not None and (family == FinetuneConfig.method or method_spec(family).takes_prompt_length):
        fields["lr"] = {**GPU_LR, family: lr}
    return fields


def resolve_profile(name: str, task: str | None = None, family: str | None = None, size: str | None = None,
                    **overrides: Any) -> Profile:
    """The profile a tuning run uses: ``get_profile(name)``; for ``gpu`` with the task's recipe for the
    method family and model size (:func:`gpu_recipe`) applied; then ``overrides`` (Profile fields; a None
    value sets None, e.g. ``ema_decay=None``; ``lr`` may be a number, the rate of ``family``).
    ``ci``/``cpu`` ignore task, family and size."""
    prof = get_profile(name)
    if name == "gpu" and task is not None and family is not None and family != "zero-shot":
        prof = replace(prof, **gpu_recipe(task, family, size))
    changes = dict(overrides)
    if "lr" in changes and not isinstance(changes["lr"], dict):
        if family is None:
            raise ValueError(f"lr={changes['lr']!r}: a single rate needs the method family")
        changes["lr"] = {**prof.lr, family: changes["lr"]}
    unknown = sorted(set(changes) - set(Profile.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; allowed {sorted(Profile.__dataclass_fields__)}")
    return replace(prof, **changes)
