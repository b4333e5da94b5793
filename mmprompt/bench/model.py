"""OFA vs. BART training-step cost on CPU, random weights.

``python -m mmprompt.bench model --preset ofa-base --batch 2 --src-len 64 --tgt-len 16 --image-size 256``

Both models get the same width, layers, heads and FFN size; BART (transformers'
``BartForConditionalGeneration``) runs text only with an encoder sequence as long as OFA's
(image patches + text tokens), so the ratio shows what OFA's extras cost: the ResNet, the position
biases and NormFormer's additional norms.

A step is a forward + backward pass with a cross-entropy loss. Times: all models live in one process
and their steps are interleaved (``--warmup`` unmeasured steps each, then ``--reps`` rounds of one step
per model), so that load from other jobs on a shared machine slows them alike; the table gives the
median wall-clock time and the median process CPU time of a step. ``ofa-text`` (OFA fed text only, as
long as OFA's image + text sequence) separates the cost of OFA's attention machinery from that of its
ResNet. Memory: each model runs two steps in its own fresh (spawned) process, which reports its peak
resident set size (``ru_maxrss``) in total and as the increase over the RSS just before the first step
(gradients, activations and temporaries of a step; weights excluded). Python's ``tracemalloc`` cannot
see torch's allocations, which is why RSS is used.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mmprompt.bench.common import call, peak_rss_bytes, rss_bytes
from mmprompt.core.atomic import write_json
from mmprompt.models.ofa.config import PRESETS, OFAConfig
from mmprompt.models.ofa.position import patch_grid_size

logger = logging.getLogger(__name__)
TARGET_RATIO = 1.5
MODEL_KINDS = ("ofa", "ofa-text", "bart")


def _build(kind: str, cfg: OFAConfig, seed: int, max_len: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind in ("ofa", "ofa-text"):
        from mmprompt.models.ofa import OFAModel

        return OFAModel(cfg, seed=seed)
    from transformers import BartConfig, BartForConditionalGeneration

    bart_cfg = BartConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers, encoder_attention_heads=cfg.encoder_attention_heads,
        decoder_attention_heads=cfg.decoder_attention_heads, encoder_ffn_dim=cfg.encoder_ffn_dim,
        decoder_ffn_dim=cfg.decoder_ffn_dim, max_position_embeddings=max(1024, max_len),
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_function="gelu",
    )
    return BartForConditionalGeneration(bart_cfg)


def _workload(kind: str, cfg: OFAConfig, batch: int, src_len: int, tgt_len: int, image_size: int, seed: int):
    """(model in train mode, a step function returning (wall s, CPU s), encoder length)."""
    enc_len = patch_grid_size(image_size) ** 2 + src_len
    model = _build(kind, cfg, seed, enc_len).train()
    gen = torch.Generator().manual_seed(seed)
    vocab = cfg.vocab_size
    targets = torch.randint(4, vocab, (batch, tgt_len), generator=gen)
    dec_in = torch.cat([torch.zeros(batch, 1, dtype=torch.long), targets[:, :-1]], dim=1)
    if kind == "ofa":
        inputs = dict(input_ids=torch.randint(4, vocab, (batch, src_len), generator=gen),
                      patch_images=torch.rand(batch, 3, image_size, image_size, generator=gen) * 2 - 1,
                      patch_masks=torch.ones(batch, dtype=torch.bool), decoder_input_ids=dec_in)
    else:  # BART, or OFA on text only: the whole encoder sequence is text
        inputs = dict(input_ids=torch.randint(4, vocab, (batch, enc_len), generator=gen), decoder_input_ids=dec_in)

    def step() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start, time.process_time() - cpu

    return model, step, enc_len


def measure_memory(kind: str, cfg_dict: dict[str, Any], batch: int, src_len: int, tgt_len: int, image_size: int,
                   seed: int, threads: int | None) -> dict[str, float]:
    """Peak RSS of one warm-up step and one step, in a fresh process (so the peak is this model's)."""
    if threads:
        torch.set_num_threads(threads)
    _, step, _ = _workload(kind, OFAConfig.from_dict(cfg_dict), batch, src_len, tgt_len, image_size, seed)
    before = rss_bytes()
    step()
    step()
    peak = peak_rss_bytes()
    return {"peak_rss_mb": peak / 2**20, "step_extra_mb": max(0, peak - before) / 2**20}


def measure_times(kinds: tuple[str, ...], cfg: OFAConfig, batch: int, src_len: int, tgt_len: int, image_size: int,
                  warmup: int, reps: int, seed: int) -> dict[str, dict[str, Any]]:
    """Step times of all models in one process, interleaved (A, B, A, B, …) so that a busy machine
    slows them alike."""
    work = {k: _workload(k, cfg, batch, src_len, tgt_len, image_size, seed) for k in kinds}
    for _, step, _ in work.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    for _ in tqdm(range(reps), desc="bench reps", leave=False):
        for k, (_, step, _) in work.items():
            times[k].append(step())
    out = {}
    for k, (model, _, enc_len) in work.items():
        wall = [t[0] for t in times[k]]
        out[k] = dict(model=k, parameters=sum(p.numel() for p in model.parameters()), encoder_length=enc_len,
                      step_seconds=statistics.median(wall), step_cpu_seconds=statistics.median(t[1] for t in times[k]),
                      step_seconds_all=wall)
    return out


def run(preset: str = "ofa-base", batch: int = 2, src_len: int = 64, tgt_len: int = 16, image_size: int = 256,
        warmup: int = 1, reps: int = 3, seed: int = 0, threads: int | None = None,
        models: tuple[str, ...] = ("ofa", "bart"), memory: bool = True, **overrides: Any) -> dict[str, Any]:
    """Measure every model in ``models``; returns the costs and the OFA/BART ratios."""
    _check(preset, batch, src_len, tgt_len, image_size, warmup, reps)
    bad = sorted(set(models) - set(MODEL_KINDS))
    if bad or not models:
        raise ValueError(f"models={models}: unknown {bad}; allowed: {list(MODEL_KINDS)}")
    cfg = OFAConfig.from_preset(preset, **overrides)
    if patch_grid_size(image_size) > cfg.image_bucket_size:
        raise ValueError(f"image_size={image_size} exceeds the preset's maximum {cfg.max_image_size}")
    if memory:  # first, so the timing process' own allocations do not matter
        mem = {kind: call(measure_memory, (kind, cfg.to_dict(), batch, src_len, tgt_len, image_size, seed, threads))
               for kind in models}
    previous_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        results = measure_times(tuple(models), cfg, batch, src_len, tgt_len, image_size, warmup, reps, seed)
    finally:
        torch.set_num_threads(previous_threads)
    for kind in models:
        results[kind].update(mem[kind] if memory else {"peak_rss_mb": float("nan"), "step_extra_mb": float("nan")})
    out: dict[str, Any] = {"preset": preset, "batch": batch, "src_len": src_len, "tgt_len": tgt_len,
                           "image_size": image_size, "threads": threads or torch.get_num_threads(),
                           "results": results}
    if "bart" in results:
        for kind in ("ofa", "ofa-text"):
            if kind in results:
                key = "time_ratio" if kind == "ofa" else "text_only_time_ratio"
                out[key] = results[kind]["step_seconds"] / results["bart"]["step_seconds"]
                out[key.replace("time", "cpu_time")] = (results[kind]["step_cpu_seconds"]
                                                        / results["bart"]["step_cpu_seconds"])
    return out


def _check(preset: str, batch: int, src_len: int, tgt_len: int, image_size: int, warmup: int, reps: int) -> None:
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; allowed: {list(PRESETS)}")
    for name, value, low in (("batch", batch, 1), ("src_len", src_len, 1), ("tgt_len", tgt_len, 1),
                             ("image_size", image_size, 16), ("warmup", warmup, 0), ("reps", reps, 1)):
        if value < low:
            raise ValueError(f"{name}={value} must be >= {low}")


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"preset {report['preset']}: batch {report['batch']}, text {report['src_len']} + image "
        f"{report['image_size']}px, target {report['tgt_len']}, {report['threads']} threads",
        "| model | parameters | encoder length | step wall s (median) | step CPU s (median) | peak RSS (MB) "
        "| step extra (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"].values():
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['encoder_length']} | {r['step_seconds']:.3f} | "
                     f"{r['step_cpu_seconds']:.3f} | {r['peak_rss_mb']:.0f} | {r['step_extra_mb']:.0f} |")
    if "time_ratio" in report:
        verdict = "meets" if report["time_ratio"] <= TARGET_RATIO else "misses"
        lines.append(f"OFA / BART step time: {report['time_ratio']:.2f}× wall, {report['cpu_time_ratio']:.2f}× CPU "
                     f"({verdict} the ≤ {TARGET_RATIO}× target on wall time)")
    if "text_only_time_ratio" in report:
        lines.append(f"OFA without image (same encoder length) / BART: {report['text_only_time_ratio']:.2f}× wall, "
                     f"{report['text_only_cpu_time_ratio']:.2f}× CPU")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ofa-base", choices=list(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--src-len", type=int, default=64)
    parser.add_argument("--tgt-len", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--models", default="ofa,bart",
                        help="comma-separated subset of ofa, ofa-text (OFA fed text only, same encoder length), bart")
    parser.add_argument("--no-memory", action="store_true", help="skip the (fresh-process) memory measurement")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    bad = sorted(set(models) - set(MODEL_KINDS))
    if bad or not models:
        parser.error(f"--models {args.models!r}: unknown {bad}; allowed: {list(MODEL_KINDS)}")
    report = run(args.preset, args.batch, args.src_len, args.tgt_len, args.image_size, args.warmup, args.reps,
                 args.seed, args.threads, models, memory=not args.no_memory)
    print(format_table(report))
    if args.json:
        write_json(args.json, report, default=str)
    return 0
