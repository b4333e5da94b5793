"""A five-minute check for a CUDA machine: prefix tuning vs. finetuning on OFA-base/-large shapes in bf16.

``python -m mmprompt.bench gpu [--presets ofa-base,ofa-large] [--batch 16] [--image-size 480] [--json F]``

For each preset, seeded random models (fp32 weights, bf16 autocast, TF32 matmuls, fused AdamW — the
``gpu`` profile's training setup) train on one fixed batch:

* **train throughput** (samples/s) of finetuning and prefix tuning (length 64, every encoder and decoder
  self-attention layer), steps interleaved (``--warmup`` unmeasured rounds, then ``--reps``);
* **peak memory** of a method alone: its weights plus what its training steps add over them
  (``torch.cuda.max_memory_allocated`` during the first ``--memory-steps`` steps, before any other step of
  that model, so AdamW's moments are included);
* **inference throughput** (samples/s) of a greedy decode of ``--decode-len`` tokens with and without
  the prefix;
* **model FLOPs utilisation** of the training steps: FLOPs of one forward + backward counted by
  ``torch.utils.flop_counter.FlopCounterMode``, over the median step time, over the device's peak dense
  bf16 FLOP/s (:data:`PEAK_BF16_TFLOPS` by device name, or ``--peak-tflops``).

Without CUDA it prints that it needs a GPU and exits 0 without measuring anything. ``--dry-run`` runs the
same code on the CPU at a tiny size (``ofa-nano-small``), so the logic can be tested anywhere; its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import statistics
from typing import Any

import torch

from mmprompt.core.checks import check_int
from mmprompt.bench.common import MB, interleaved, measure_peak, paired_ratio
from mmprompt.core.atomic import write_json
from mmprompt.bench.tuning import METHODS, NO_METHOD, Contender, Shape
from mmprompt.models.ofa.config import PRESETS

logger = logging.getLogger(__name__)

NO_CUDA = "CUDA is not available: `python -m mmprompt.bench gpu` needs an NVIDIA GPU; nothing was measured " \
          "(use --dry-run to exercise the benchmark's code on the CPU at a tiny size)."
#: Peak dense bf16 tensor-core FLOP/s (TFLOP/s, no sparsity) by a substring of the device name; the first
#: match wins, so more specific names come first. Vendor datasheet values.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)
DEFAULT_PRESETS = ("ofa-base", "ofa-large")
TRAINED = ("finetune", "prefix")


def peak_tflops(device_name: str) -> float | None:
    """The table's peak dense bf16 TFLOP/s of a device name, or None when it is not listed."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def step_flops(contender: Contender) -> int:
    """FLOPs of one forward + backward of ``contender``'s training step (counted, not estimated)."""
    from torch.utils.flop_counter import FlopCounterMode

    contender.model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        with contender.autocast():
            logits = contender.model(**contender.inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 contender.targets.reshape(-1))
        loss.backward()
    contender.model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _weights_mb(contender: Contender) -> float:
    return sum(p.numel() * p.element_size() for p in contender.model.parameters()) / MB


def measure_preset(shape: Shape, methods: tuple[str, ...], device: torch.device, warmup: int, reps: int,
                   memory_steps: int, peak: float | None) -> dict[str, Any]:
    """Every measurement of one preset; the models are freed afterwards."""
    kw = dict(device=device, autocast=torch.bfloat16, fused=device.type == "cuda")
    trained = {m: Contender(m, shape, **kw) for m in methods}
    contenders = {**trained, NO_METHOD: Contender(NO_METHOD, shape, **kw)}
    rows: dict[str, dict[str, Any]] = {}
    for m, c in trained.items():  # memory first: each model's first steps allocate its gradients and moments
        mem = measure_peak(lambda c=c: [c.update() for _ in range(memory_steps)], device)
        rows[m] = {"method": m, "trainable": c.trainable, "peak_memory_mb": mem["step_memory_mb"] + _weights_mb(c),
                   "step_memory_mb": mem["step_memory_mb"], "flops": step_flops(c)}
    train = interleaved({m: c.train_step for m, c in trained.items()}, warmup, reps)
    infer_methods = [NO_METHOD] + [m for m in methods if m != "finetune"]
    infer = interleaved({m: (lambda c=contenders[m]: c.infer("decode")) for m in infer_methods}, warmup, reps)
    ft = rows["finetune"]
    for m, row in rows.items():
        step = statistics.median(train[m])
        row.update(step_seconds=step, train_samples_per_s=shape.batch / step,
                   train_speedup_vs_finetune=paired_ratio(train["finetune"], train[m]),
                   memory_ratio=row["peak_memory_mb"] / ft["peak_memory_mb"],
                   tflops_per_s=row["flops"] / step / 1e12,
                   mfu=(row["flops"] / step / (peak * 1e12)) if peak else None)
    for m in infer_methods:
        row = rows.setdefault(m, {"method": m, "trainable": contenders[m].trainable})
        seconds = statistics.median(infer[m])
        row.update(infer_seconds=seconds, infer_samples_per_s=shape.batch / seconds,
                   infer_time_ratio=paired_ratio(infer[m], infer[NO_METHOD]))
    parameters = contenders[NO_METHOD].total
    del trained, contenders
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"shape": dataclasses.asdict(shape), "parameters": parameters, "results": rows}


def run(presets: tuple[str, ...] = DEFAULT_PRESETS, batch: int = 16, src_len: int = 64, tgt_len: int = 16,
        image_size: int = 480, length: int = 64, decode_len: int = 16, methods: tuple[str, ...] = TRAINED,
        warmup: int = 3, reps: int = 10, memory_steps: int = 2, peak_tflops_override: float | None = None,
        device: str = "cuda", seed: int = 0) -> dict[str, Any]:
    """Measure every preset on ``device``; returns the report (see the module docstring)."""
    bad = [p for p in presets if p not in PRESETS]
    if bad or not presets:
        raise ValueError(f"presets={list(presets)!r}: a non-empty list from {list(PRESETS)}")
    if "finetune" not in methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
        raise ValueError(f"methods={list(methods)!r}: distinct values from {list(METHODS)}, finetune included")
    for name, value, low in (("warmup", warmup, 0), ("reps", reps, 1), ("memory_steps", memory_steps, 1)):
        check_int(f"{name}", value, low)
    if peak_tflops_override is not None and not peak_tflops_override > 0:
        raise ValueError(f"peak_tflops={peak_tflops_override!r}: must be > 0")
    shapes = [Shape(p, batch, src_len, tgt_len, image_size, length, decode_len, seed) for p in presets]
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(dev)
    else:
        name = "cpu"
    peak = peak_tflops_override or (peak_tflops(name) if dev.type == "cuda" else None)
    setup = "bf16 autocast, TF32, fused AdamW" if dev.type == "cuda" else "bf16 autocast, foreach AdamW"
    report: dict[str, Any] = {"device": name, "peak_bf16_tflops": peak, "setup": setup, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "warmup": warmup, "reps": reps, "presets": {}}
    for shape in shapes:
        logger.info("measuring %s", shape.preset)
        torch.manual_seed(seed)
        try:
            report["presets"][shape.preset] = measure_preset(shape, methods, dev, warmup, reps, memory_steps, peak)
        except torch.cuda.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            report["presets"][shape.preset] = {
                "shape": dataclasses.asdict(shape), "results": {},
                "error": f"CUDA out of memory at batch {shape.batch}: rerun with a smaller --batch"}
    return report


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    """One Markdown table over every preset and method."""
    peak = report["peak_bf16_tflops"]
    first = next(iter(report["presets"].values()))["shape"]
    lines = [
        f"{report['device']} (peak bf16 {_fmt(peak, '.0f')} TFLOP/s), torch {report['torch']}: {report['setup']}; "
        f"batch {first['batch']}, text {first['src_len']} + image {first['image_size']}px, target "
        f"{first['tgt_len']}; prefix length {first['length']}; inference = greedy decode of {first['decode_len']} "
        f"tokens; {report['reps']} interleaved reps",
        "",
        "| preset | method | trainable | train samples/s | speed-up vs FT | peak memory GiB | × FT | TFLOP/step "
        "| achieved TFLOP/s | MFU | inference samples/s | × no prefix (time) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for preset, block in report["presets"].items():
        if "error" in block:
            lines.append(f"| {preset} | {block['error']} |" + " |" * 10)
        for r in block["results"].values():
            lines.append(
                f"| {preset} | {r['method']} | {r['trainable']:,} | {_fmt(r.get('train_samples_per_s'), '.1f')} "
                f"| {_fmt(r.get('train_speedup_vs_finetune'), '.2f')} "
                f"| {_fmt(r['peak_memory_mb'] / 1024 if 'peak_memory_mb' in r else None, '.2f')} "
                f"| {_fmt(r.get('memory_ratio'), '.2f')} "
                f"| {_fmt(r['flops'] / 1e12 if 'flops' in r else None, '.3f')} "
                f"| {_fmt(r.get('tflops_per_s'), '.1f')} | {_fmt(r.get('mfu'), '.1%')} "
                f"| {_fmt(r.get('infer_samples_per_s'), '.1f')} | {_fmt(r.get('infer_time_ratio'), '.2f')} |")
    if peak is None:
        lines += ["", "MFU: the device is not in the peak-FLOP/s table; pass --peak-tflops."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.bench gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
    parser.add_argument("--methods", default=",".join(TRAINED), help=f"comma-separated, finetune first; of {METHODS}")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--src-len", type=int, default=64)
    parser.add_argument("--tgt-len", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=480)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--decode-len", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (default: by device name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true",
                        help="run the same code on the CPU at a tiny size (ofa-nano-small); numbers mean nothing")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.dry_run:
        kw = dict(presets=("ofa-nano-small",), batch=2, src_len=8, tgt_len=4, image_size=64, length=4, decode_len=3,
                  warmup=0, reps=1, memory_steps=1, device="cpu")
    elif not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    else:
        kw = dict(presets=presets, batch=args.batch, src_len=args.src_len, tgt_len=args.tgt_len,
                  image_size=args.image_size, length=args.length, decode_len=args.decode_len, warmup=args.warmup,
                  reps=args.reps, memory_steps=args.memory_steps, device="cuda")
    try:
        report = run(methods=methods, peak_tflops_override=args.peak_tflops, seed=args.seed, **kw)
    except ValueError as exc:
        parser.error(str(exc))
    report["dry_run"] = bool(args.dry_run)
    print(("DRY RUN on the CPU at a tiny size: the numbers mean nothing.\n" if args.dry_run else "")
          + format_table(report))
    if args.json:
        write_json(args.json, report, default=str)
    return 0
