"""Prefix tuning vs. finetuning, BitFit, Adapter and LoRA: training-step time, step memory, inference time.

``python -m mmprompt.bench tuning [--preset ofa-base] [--batch 2] [--src-len 64] [--image-size 256]
[--tgt-len 16] [--length 64] [--decode-len 16] [--methods finetune,prefix,bitfit,adapter,lora] [--json F]``

Every method gets its own seeded random ``OFAModel`` of the preset (the same weights for all), the same
batch (``--batch`` samples of ``--src-len`` text tokens, a ``--image-size`` image, ``--tgt-len`` target
tokens) and AdamW over exactly the parameters the method trains (:func:`mmprompt.tuning.apply_method`
freezes the rest). Prefix tuning uses the paper's setting: length ``--length`` (64) in every layer of
the encoder and decoder self-attention.

* **Train step** = zero_grad, forward, cross-entropy, backward, AdamW step, in train mode.
* **Inference** = a greedy decode of exactly ``--decode-len`` tokens with the cache (``--inference
  forward``: one teacher-forced forward instead), in eval mode without gradients, against the same model
  with no method applied (``none``).
* **Time**: all models live in one process (a fresh one unless ``--in-process``) and their steps are
  interleaved, the order rotating every repetition, so that a busy shared machine slows them alike;
  ``--warmup`` unmeasured repetitions, then ``--reps``. Ratios are medians of the per-repetition ratios
  (method / finetune for training, method / none for inference).
* **Step memory**: what one training step adds over the weights. Each method runs alone in a fresh
  spawned process: it builds the model, the batch and the optimizer, then samples its resident set size
  in a thread while it runs ``--memory-steps`` steps; the figure is the peak RSS during those steps minus
  the RSS just before them, i.e. gradients, AdamW's two moments (allocated in the first step),
  activations saved for backward and temporaries — the weights excluded (``peak_total_mb`` is the
  process' whole peak). On CUDA the allocator's ``max_memory_allocated`` plays the part of the RSS.
* **Checks** (one extra step per method, before timing): no frozen parameter holds a ``.grad`` (autograd
  computed no weight gradient for it) and whether the ResNet's output requires grad. For prefix, BitFit,
  Adapter and LoRA it must not: no trainable parameter lies below the image embeddings, so autograd
  records no graph through the frozen ResNet and the backward pass stops at the transformer.

Targets (issue #5): prefix step ≤ 0.7 × finetuning's, step memory ≤ 0.6 ×, inference ≤ 1.10 × no prefix.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmprompt.core.checks import check_int
from mmprompt.bench.common import call, interleaved, measure_peak, paired_ratio, setup_process, timed
from mmprompt.core.atomic import write_json
from mmprompt.models.ofa.config import PRESETS, OFAConfig
from mmprompt.models.ofa.position import patch_grid_size

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("finetune", "prefix", "bitfit", "adapter", "lora")
NO_METHOD = "none"
INFERENCE_KINDS = ("decode", "forward")
TARGETS = {"prefix_time_ratio": 0.7, "prefix_memory_ratio": 0.6, "prefix_inference_ratio": 1.10}


@dataclass(frozen=True)
class Shape:
    """The benchmark's workload: model preset, batch and sequence sizes, prefix length."""

    preset: str = "ofa-base"
    batch: int = 2
    src_len: int = 64
    tgt_len: int = 16
    image_size: int = 256
    length: int = 64
    decode_len: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is unknown; allowed: {list(PRESETS)}")
        for name, low in (("batch", 1), ("src_len", 1), ("tgt_len", 1), ("image_size", 16), ("length", 1),
                          ("decode_len", 1), ("seed", 0)):
            value = getattr(self, name)
            check_int(f"{name}", value, low)
        cfg = self.config()
        if patch_grid_size(self.image_size) > cfg.image_bucket_size:
            raise ValueError(f"image_size={self.image_size} exceeds the preset's maximum {cfg.max_image_size}")
        if self.src_len > cfg.max_position_embeddings or self.tgt_len + self.decode_len > cfg.max_position_embeddings:
            raise ValueError(f"src_len={self.src_len} / tgt_len + decode_len={self.tgt_len + self.decode_len} exceed "
                             f"the preset's max_position_embeddings={cfg.max_position_embeddings}")

    def config(self) -> OFAConfig:
        return OFAConfig.from_preset(self.preset)


def method_config(method: str, length: int = 64, seed: int = 0) -> Any:
    """The tuning config of a method name at the benchmark's settings (``none``: no method)."""
    from mmprompt.tuning import AdapterConfig, BitFitConfig, FinetuneConfig, LoRAConfig, PrefixConfig

    configs = {"finetune": lambda: FinetuneConfig(), "prefix": lambda: PrefixConfig(length=length, seed=seed),
               "bitfit": lambda: BitFitConfig(), "adapter": lambda: AdapterConfig(seed=seed),
               "lora": lambda: LoRAConfig(seed=seed), NO_METHOD: lambda: None}
    if method not in configs:
        raise ValueError(f"method={method!r}: allowed {[*METHODS, NO_METHOD]}")
    return configs[method]()


def make_batch(cfg: OFAConfig, shape: Shape,
               device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Seeded random model inputs (text, image, teacher-forced decoder input) and the targets."""
    gen = torch.Generator().manual_seed(shape.seed + 1)
    b, vocab = shape.batch, cfg.vocab_size
    targets = torch.randint(4, vocab, (b, shape.tgt_len), generator=gen)
    inputs = {
        "input_ids": torch.randint(4, vocab, (b, shape.src_len), generator=gen),
        "patch_images": torch.rand(b, 3, shape.image_size, shape.image_size, generator=gen) * 2 - 1,
        "patch_masks": torch.ones(b, dtype=torch.bool),
        "decoder_input_ids": torch.cat([torch.zeros(b, 1, dtype=torch.long), targets[:, :-1]], dim=1),
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return inputs, targets.to(device)


class Contender:
    """One method on its own copy of the backbone, with its optimizer and the shared batch.

    ``train_step()`` / ``infer()`` run (and time) one step; ``check()`` reports frozen parameters holding
    gradients and whether the ResNet ran under autograd.
    """

    def __init__(self, method: str, shape: Shape, device: torch.device | str = "cpu", fused: bool = False,
                 autocast: torch.dtype | None = None) -> None:
        from mmprompt.models.ofa import OFAModel
        from mmprompt.tuning import apply_method, count_parameters

        self.method, self.shape, self.device = method, shape, torch.device(device)
        self.cfg = shape.config()
        self.model = OFAModel(self.cfg, seed=shape.seed)
        method_cfg = method_config(method, shape.length, shape.seed)
        if method_cfg is not None:
            apply_method(self.model, method_cfg)
        self.model.to(self.device)
        counts = count_parameters(self.model)
        self.trainable = counts["trainable"] if method_cfg is not None else 0
        self.total, self.backbone_total = counts["total"], counts["backbone_total"]
        self.params = [p for p in self.model.parameters() if p.requires_grad] if method_cfg is not None else []
        impl = {"fused": True} if fused else ({"foreach": True} if self.device.type == "cpu" else {})
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, **impl) if self.params else None
        self.inputs, self.targets = make_batch(self.cfg, shape, self.device)
        self.amp = autocast

    def autocast(self):
        """The autocast context of this contender's forward passes (disabled without ``autocast``)."""
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def update(self) -> None:
        """One training step (forward, loss, backward, AdamW)."""
        if self.optimizer is None:
            raise ValueError(f"method={self.method!r} trains nothing; it has no training step")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(**self.inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), self.targets.reshape(-1))
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def generate(self, kind: str = "decode") -> None:
        """One inference call: a greedy decode of exactly ``decode_len`` tokens, or one forward."""
        from mmprompt.eval.decoding import greedy_search

        self.model.eval()
        with self.autocast():
            if kind == "forward":
                self.model(**self.inputs)
            else:
                n = self.shape.decode_len
                greedy_search(self.model, self.inputs, max_len=n, min_len=n)

    def train_step(self) -> float:
        return timed(self.update, self.device)

    def infer(self, kind: str = "decode") -> float:
        return timed(lambda: self.generate(kind), self.device)

    def check(self) -> dict[str, Any]:
        """Run one training step and report ``frozen_with_grad`` (names of frozen parameters that hold a
        gradient afterwards) and ``resnet_in_graph`` (whether the ResNet's output required grad)."""
        seen: list[bool] = []
        handle = self.model.encoder.embed_images.register_forward_hook(
            lambda _m, _i, out: seen.append(bool(out.requires_grad)))
        try:
            self.update()
        finally:
            handle.remove()
        frozen = [n for n, p in self.model.named_parameters() if not p.requires_grad and p.grad is not None]
        self.optimizer.zero_grad(set_to_none=True)
        return {"frozen_with_grad": frozen, "resnet_in_graph": any(seen)}


# ------------------------------------------------------------------ measurements (may run in fresh processes)


def measure_times(shape: Shape, methods: tuple[str, ...], inference: str, warmup: int, reps: int,
                  threads: int | None, device: str = "cpu") -> dict[str, Any]:
    """Train-step and inference times of every method in one process, interleaved; plus the checks and
    the parameter counts."""
    setup_process(threads)
    torch.manual_seed(shape.seed)
    trained = {m: Contender(m, shape, device) for m in methods}
    infer_methods = [NO_METHOD] + [m for m in methods if m != "finetune"]
    contenders = dict(trained)
    if NO_METHOD not in contenders:
        contenders[NO_METHOD] = Contender(NO_METHOD, shape, device)
    checks = {m: c.check() for m, c in trained.items()}
    train_times = interleaved({m: c.train_step for m, c in trained.items()}, warmup, reps)
    infer_steps: dict[str, Callable[[], float]] = {m: (lambda c=contenders[m]: c.infer(inference))
                                                   for m in infer_methods}
    infer_times = interleaved(infer_steps, warmup, reps)
    params = {m: {"trainable": c.trainable, "total": c.total, "backbone_total": c.backbone_total}
              for m, c in contenders.items()}
    return {"train_times": train_times, "infer_times": infer_times, "checks": checks, "parameters": params}


def measure_memory(method: str, shape: Shape, steps: int, threads: int | None, device: str = "cpu") -> dict[str, float]:
    """One method's training-step memory over its weights (meant to run alone in a fresh process)."""
    setup_process(threads)
    contender = Contender(method, shape, device)

    def run() -> None:
        for _ in range(steps):
            contender.update()

    return measure_peak(run, device)


# ------------------------------------------------------------------ the report


def run(shape: Shape | None = None, methods: tuple[str, ...] = METHODS, inference: str = "decode", warmup: int = 1,
        reps: int = 5, memory_steps: int = 2, threads: int | None = None, memory: bool = True,
        in_process: bool = False) -> dict[str, Any]:
    """Measure ``methods`` (see the module docstring); returns the report with per-method rows and ratios."""
    shape = shape or Shape()
    _check(methods, inference, warmup, reps, memory_steps)
    mem: dict[str, dict[str, float]] = {}
    if memory:  # first, so that the timing process' allocations do not matter
        for m in methods:
            mem[m] = call(measure_memory, (m, shape, memory_steps, threads), in_process)
    timed_ = call(measure_times, (shape, tuple(methods), inference, warmup, reps, threads), in_process)
    return _report(shape, methods, inference, warmup, reps, threads, mem, timed_)


def _check(methods: tuple[str, ...], inference: str, warmup: int, reps: int, memory_steps: int) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods={list(methods)!r}: a non-empty list of distinct values from {list(METHODS)}")
    if "finetune" not in methods:
        raise ValueError(f"methods={list(methods)!r}: must include 'finetune' (the reference of the ratios)")
    if inference not in INFERENCE_KINDS:
        raise ValueError(f"inference={inference!r}: allowed {INFERENCE_KINDS}")
    for name, value, low in (("warmup", warmup, 0), ("reps", reps, 1), ("memory_steps", memory_steps, 1)):
        check_int(f"{name}", value, low)


def _report(shape: Shape, methods, inference, warmup, reps, threads, mem, timed_) -> dict[str, Any]:
    train, infer = timed_["train_times"], timed_["infer_times"]
    ft_mem = mem.get("finetune", {}).get("step_memory_mb")
    rows: dict[str, dict[str, Any]] = {}
    for m in (*methods, NO_METHOD):
        p = timed_["parameters"][m]
        row: dict[str, Any] = {"method": m, "trainable": p["trainable"],
                               "trainable_%": 100.0 * p["trainable"] / max(p["backbone_total"], 1)}
        if m in train:
            row.update(step_seconds=statistics.median(train[m]), step_seconds_all=train[m],
                       step_time_ratio=paired_ratio(train[m], train["finetune"]), **timed_["checks"][m])
        if m in mem:
            row.update(mem[m])
            row["step_memory_ratio"] = (mem[m]["step_memory_mb"] / ft_mem) if ft_mem else float("nan")
        if m in infer:
            row.update(infer_seconds=statistics.median(infer[m]), infer_seconds_all=infer[m],
                       infer_ratio=paired_ratio(infer[m], infer[NO_METHOD]))
        rows[m] = row
    report = {"shape": dataclasses.asdict(shape), "inference": inference, "warmup": warmup, "reps": reps,
              "threads": threads or torch.get_num_threads(), "torch": torch.__version__, "results": rows,
              "targets": TARGETS}
    if "prefix" in rows:
        pre = rows["prefix"]
        report["prefix_time_ratio"] = pre["step_time_ratio"]
        report["prefix_memory_ratio"] = pre.get("step_memory_ratio", float("nan"))
        report["prefix_inference_ratio"] = pre["infer_ratio"]
    return report


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    """The report as one Markdown table plus the verdicts on the issue's targets."""
    s = report["shape"]
    lines = [
        f"{s['preset']}, random weights: batch {s['batch']}, text {s['src_len']} + image {s['image_size']}px, "
        f"target {s['tgt_len']}; prefix length {s['length']} (encoder + decoder self-attention); inference: "
        + (f"greedy decode of {s['decode_len']} tokens" if report["inference"] == "decode" else "one forward")
        + f"; {report['threads']} threads, {report['reps']} interleaved reps",
        "",
        "| method | trainable | % of backbone | train step s | × finetune | step memory MB | × finetune "
        "| inference s | × no method | frozen params with .grad | ResNet in autograd graph |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"].values():
        frozen = r.get("frozen_with_grad")
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {_fmt(r['trainable_%'], '.3f')} "
            f"| {_fmt(r.get('step_seconds'), '.3f')} "
            f"| {_fmt(r.get('step_time_ratio'), '.2f')} | {_fmt(r.get('step_memory_mb'), '.0f')} "
            f"| {_fmt(r.get('step_memory_ratio'), '.2f')} | {_fmt(r.get('infer_seconds'), '.3f')} "
            f"| {_fmt(r.get('infer_ratio'), '.2f')} | {'–' if frozen is None else len(frozen)} "
            f"| {'–' if 'resnet_in_graph' not in r else ('yes' if r['resnet_in_graph'] else 'no')} |")
    if "prefix_time_ratio" in report:
        lines.append("")
        for key, label in (("prefix_time_ratio", "prefix / finetune train step"),
                           ("prefix_memory_ratio", "prefix / finetune step memory"),
                           ("prefix_inference_ratio", "prefix / no prefix inference")):
            value, target = report[key], TARGETS[key]
            verdict = "n/a" if value != value else ("meets" if value <= target else "misses")
            lines.append(f"{label}: {_fmt(value, '.2f')}× ({verdict} the ≤ {target}× target)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.bench tuning", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ofa-base", choices=list(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--src-len", type=int, default=64)
    parser.add_argument("--tgt-len", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--length", type=int, default=64, help="prefix length (every layer, both stacks)")
    parser.add_argument("--decode-len", type=int, default=16, help="tokens decoded per inference call")
    parser.add_argument("--inference", default="decode", choices=INFERENCE_KINDS)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset (with finetune)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per fresh memory process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurement")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (no fresh processes)")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:
        shape = Shape(args.preset, args.batch, args.src_len, args.tgt_len, args.image_size, args.length,
                      args.decode_len, args.seed)
        _check(methods, args.inference, args.warmup, args.reps, args.memory_steps)
    except ValueError as exc:
        parser.error(str(exc))
    report = run(shape, methods, args.inference, args.warmup, args.reps, args.memory_steps, args.threads,
                 memory=not args.no_memory, in_process=args.in_process)
    print(format_table(report))
    if args.json:
        write_json(args.json, report, default=str)
    return 0
