"""mmprompt prefix tuning vs. PEFT prefix tuning: training-step cost and a probed feature table.

``python -m mmprompt.bench peers [--preset bart-base] [--length 64] [--batch 2] [--src-len 64] [--tgt-len 16]``

Cost: the same random BART-base-shaped ``BartForConditionalGeneration`` (sdpa attention), the same prefix
length, equal sites — mmprompt with ``sites=("decoder_self",)`` (flat table, no dropout) against PEFT's
``PrefixTuningConfig`` (task ``SEQ_2_SEQ_LM``, no projection), which reaches decoder self-attention only.
A step is forward + cross-entropy + backward + AdamW step, in train mode. Time: both methods in one fresh
(spawned) process, their steps interleaved with the order flipped every repetition, so the changing load of
a shared machine hits both alike; ``--warmup`` unmeasured repetitions, then ``--reps``; the time ratio is
the median of the per-repetition ratios mmprompt / PEFT. Memory: each method alone in a fresh process; on
CPU the peak resident set size sampled during its steps minus the RSS just before them (and the process'
total peak), on CUDA ``max_memory_allocated`` during the steps minus what was allocated before.
``--rounds`` repeats all of it and pools the steps.

Features: probed on a tiny random BART, never taken from documentation. :class:`AttentionProbe` wraps
transformers' sdpa attention function and records, for every attention call, how many key columns it
received beyond the real keys (encoder self: its queries; decoder self: the decoder positions so far;
cross: the encoder length). From that it reports which sites and layers receive prefix columns in a
training forward, under depth control, and at every step of greedy and beam-search ``generate``;
gradient checkpointing, MLP folding and loading onto another backbone are exercised directly.

PEFT is an optional extra (``pip install 'mmprompt[peers]'``); without it the benchmark says so and
exits with status 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import statistics
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mmprompt.core.checks import check_int
from mmprompt.bench.common import call, interleaved, measure_peak, setup_process, timed
from mmprompt.core.atomic import write_json
from mmprompt.models.florence2.model import enable_checkpointing

logger = logging.getLogger(__name__)

TARGET_TIME_RATIO = 1.0
PRESETS: dict[str, dict[str, int]] = {
    "bart-base": dict(d_model=768, layers=6, heads=12, ffn=3072, vocab=50265, max_positions=1024),
    "tiny": dict(d_model=32, layers=2, heads=2, ffn=64, vocab=128, max_positions=128),
}
METHODS: tuple[str, ...] = ("mmprompt", "peft")
PEFT_MISSING = "PEFT is not installed: the peers benchmark needs it (pip install 'mmprompt[peers]' or pip install peft)"
_SITE_RE = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn|cross_attn)$")
KINDS = ("encoder_self", "decoder_self", "decoder_cross")


def peft_available() -> bool:
    """True when the optional ``peft`` package can be imported."""
    return importlib.util.find_spec("peft") is not None


# ------------------------------------------------------------------ the probe


@dataclass(frozen=True)
class ProbeCall:
    """One attention call: its site, query/key lengths and the key columns beyond the real keys."""

    kind: str
    layer: int
    q_len: int
    k_len: int
    extra: int


class AttentionProbe:
    """Context manager recording prefix columns received by every attention call of ``model``.

    Works for any BART-family model running transformers' ``sdpa`` attention (prefixes added by
    mmprompt's attention function or by a cache, as PEFT does): it overrides ``sdpa`` in
    ``ALL_ATTENTION_FUNCTIONS`` while active and restores it on exit.
    """

    def __init__(self, model: nn.Module) -> None:
        self.sites: dict[int, tuple[str, int]] = {}
        for name, module in model.named_modules():
            match = _SITE_RE.search(name)
            if match and not any(w in name.lower() for w in ("vision", "visual")):
                stack, layer, attn = match.groups()
                self.sites[id(module)] = (f"{stack}_self" if attn == "self_attn" else f"{stack}_cross", int(layer))
        if not self.sites:
            raise ValueError(f"{type(model).__name__} has no BART-family attention modules to probe")
        self.calls: list[ProbeCall] = []
        self._src_len = 0
        self._decoded: dict[int, int] = {}

    def __enter__(self) -> "AttentionProbe":
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self._functions = ALL_ATTENTION_FUNCTIONS
        self._original = ALL_ATTENTION_FUNCTIONS["sdpa"]
        original = self._original

        def probe(module, query, key, value, attention_mask, **kwargs):
            self._record(module, query.shape[2], key.shape[2])
            return original(module, query, key, value, attention_mask, **kwargs)

        ALL_ATTENTION_FUNCTIONS["sdpa"] = probe
        return self

    def __exit__(self, *exc: object) -> None:
        del self._functions["sdpa"]
        if self._functions["sdpa"] is not self._original:
            self._functions["sdpa"] = self._original

    def _record(self, module: nn.Module, q_len: int, k_len: int) -> None:
        site = self.sites.get(id(module))
        if site is None:
            return
        kind, layer = site
        if kind == "encoder_self":
            if layer == 0:  # a new encoder pass starts a new sequence
                self._src_len, self._decoded = q_len, {}
            real = q_len
        elif kind == "decoder_self":
            real = q_len if q_len > 1 else self._decoded.get(layer, 0) + 1
            self._decoded[layer] = real
        else:
            real = self._src_len
        self.calls.append(ProbeCall(kind, layer, q_len, k_len, k_len - real))

    def clear(self) -> None:
        self.calls.clear()

    def reached(self) -> dict[str, list[int]]:
        """Layers of each site kind that received prefix columns in at least one call."""
        out: dict[str, set[int]] = {kind: set() for kind in KINDS}
        for record in self.calls:
            if record.extra > 0:
                out[record.kind].add(record.layer)
        return {kind: sorted(layers) for kind, layers in out.items()}

    def decoding_calls(self) -> tuple[int, int]:
        """(decoder self-attention calls of single-token decoding steps with prefix columns, all of them)."""
        steps = [c for c in self.calls if c.kind == "decoder_self" and c.q_len == 1]
        return sum(c.extra > 0 for c in steps), len(steps)


# ------------------------------------------------------------------ models and methods


def build_bart(preset: str = "tiny", seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    """A seeded random ``BartForConditionalGeneration`` of a preset's shape (train-mode dropout 0.1)."""
    from transformers import BartConfig, BartForConditionalGeneration

    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: allowed {list(PRESETS)}")
    p = PRESETS[preset]
    config = BartConfig(
        vocab_size=p["vocab"], d_model=p["d_model"], encoder_layers=p["layers"], decoder_layers=p["layers"],
        encoder_attention_heads=p["heads"], decoder_attention_heads=p["heads"], encoder_ffn_dim=p["ffn"],
        decoder_ffn_dim=p["ffn"], max_position_embeddings=p["max_positions"], pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None, attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    return BartForConditionalGeneration(config)


def apply_mmprompt(model: nn.Module, length: int, sites: tuple[str, ...] = ("decoder_self",), **kw: Any) -> nn.Module:
    from mmprompt.tuning import PrefixConfig, apply_prefix

    apply_prefix(model, PrefixConfig(length=length, sites=sites, dropout=0.0, **kw))
    return model


def apply_peft(model: nn.Module, length: int, **kw: Any) -> nn.Module:
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    config = PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=length, **kw)
    return get_peft_model(model, config)


APPLY: dict[str, Callable[..., nn.Module]] = {"mmprompt": apply_mmprompt, "peft": apply_peft}


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _batch(vocab: int, batch: int, src_len: int, tgt_len: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, vocab, (batch, src_len), generator=gen),
            "labels": torch.randint(3, vocab, (batch, tgt_len), generator=gen)}


# ------------------------------------------------------------------ step cost


@dataclass
class StepCost:
    method: str
    trainable: int
    step_seconds: float
    step_seconds_all: list[float]
    step_memory_mb: float
    peak_total_mb: float
    device: str


def _trainer(method: str, preset: str, length: int, batch: int, src_len: int, tgt_len: int, seed: int,
             dev: torch.device) -> tuple[Callable[[], float], int]:
    """A timed training step of one method on its own model, and its trainable-parameter count."""
    model = APPLY[method](build_bart(preset, seed), length).to(dev)
    model.train()
    params = _trainable(model)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    inputs = {k: v.to(dev) for k, v in _batch(PRESETS[preset]["vocab"], batch, src_len, tgt_len, seed + 1).items()}

    def update() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        optimizer.step()

    def step() -> float:
        return timed(update, dev)

    return step, sum(p.numel() for p in params)


def measure_time(preset: str, length: int, batch: int, src_len: int, tgt_len: int, warmup: int, reps: int,
                 seed: int, threads: int | None, device: str) -> dict[str, Any]:
    """Step times of both methods in one process, steps interleaved (the order flips every repetition), so
    a shared machine's changing load hits both alike. Returns {"times": {method: [s]}, "trainable": ...}."""
    setup_process(threads)
    dev = torch.device(device)
    steps, trainable = {}, {}
    for method in METHODS:
        steps[method], trainable[method] = _trainer(method, preset, length, batch, src_len, tgt_len, seed, dev)
    return {"times": interleaved(steps, warmup, reps), "trainable": trainable}


def measure_memory(method: str, preset: str, length: int, batch: int, src_len: int, tgt_len: int, warmup: int,
                   reps: int, seed: int, threads: int | None, device: str) -> dict[str, float]:
    """One method's step memory (meant to run alone in a fresh process): CPU peak RSS sampled during the
    steps minus the RSS before them, and the process' total peak; CUDA allocator peaks likewise."""
    setup_process(threads)
    dev = torch.device(device)
    step, _ = _trainer(method, preset, length, batch, src_len, tgt_len, seed, dev)

    def run() -> None:
        for _ in range(warmup + reps):
            step()

    return measure_peak(run, dev)


# ------------------------------------------------------------------ features


def _grads(model: nn.Module, inputs: dict) -> list[torch.Tensor]:
    torch.manual_seed(0)  # same dropout masks in every call
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()
    return [p.grad.detach().clone() for p in _trainable(model)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def _error(err: BaseException) -> str:
    message = re.sub(r"'/[^']*'", "'…'", str(err).splitlines()[0])  # no temporary paths in the table
    return f"{type(err).__name__}: {message[:110]}"


def _layers_text(layers: list[int], total: int) -> str:
    return f"yes: layers {layers} ({len(layers)}/{total})" if layers else "no"


def _probe_sites(make: Callable[[], nn.Module], inputs: dict) -> dict[str, list[int]]:
    model = make()
    model.train()
    with AttentionProbe(model) as probe:
        model(**inputs)
    return probe.reached()


def _probe_generation(make: Callable[[], nn.Module], source: torch.Tensor, beams: int) -> str:
    """Prefix columns at every decoding step, and whether generation differs from the bare backbone."""
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, num_beams=beams, do_sample=False, pad_token_id=1,
                  eos_token_id=2, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        bare = build_bart("tiny", 0).eval().generate(input_ids=source, **kwargs)
    model = make()
    _perturb(_trainable(model))
    model.eval()
    try:
        with AttentionProbe(model) as probe, torch.no_grad():
            out = model.generate(input_ids=source, **kwargs)
    except Exception as err:  # noqa: BLE001 - the table reports what happened
        return f"no: {_error(err)}"
    hit, total = probe.decoding_calls()
    same = len(out.scores) == len(bare.scores) and all(torch.equal(a, b) for a, b in zip(out.scores, bare.scores))
    verdict = "yes" if total and hit == total and not same else "no"
    effect = "scores identical to the backbone without prefix" if same else "scores differ from the bare backbone"
    return f"{verdict}: prefix columns in {hit}/{total} decoder self-attention decoding calls; {effect}"


def _probe_checkpointing(method: str, length: int, inputs: dict) -> str:
    plain = APPLY[method](build_bart("tiny", 0), length)
    plain.train()
    reference = _grads(plain, inputs)
    outcomes, ok = [], True
    for order in ("before", "after"):
        model = build_bart("tiny", 0)
        try:
            if order == "after":
                model = APPLY[method](model, length)
            enable_checkpointing(model)
            if order == "before":
                model = APPLY[method](model, length)
            model.train()
            diff = _max_diff(_grads(model, inputs), reference)
            ok = ok and diff < 1e-5
            outcomes.append(f"enabled {order} applying: gradients max abs Δ {diff:.1e}")
        except Exception as err:  # noqa: BLE001 - the table reports what happened
            ok = False
            outcomes.append(f"enabled {order} applying: {_error(err)}")
    return ("yes; " if ok else "no; ") + "; ".join(outcomes)


def _perturb(params: list[nn.Parameter]) -> None:
    with torch.no_grad():
        for i, p in enumerate(params):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))


def _probe_folding_mmprompt(length: int, inputs: dict) -> str:
    from mmprompt.tuning import count_parameters, fold, prefix_module

    model = apply_mmprompt(build_bart("tiny", 0), length, sites=KINDS, reparam=True, reparam_hidden=8)
    _perturb(_trainable(model))
    model.eval()
    before_params = count_parameters(model)["trainable"]
    with torch.no_grad():
        before = model(**inputs).logits
        fold(prefix_module(model))
        after = model(**inputs).logits
    trainable = count_parameters(model)["trainable"]
    return (f"yes: fold() in place, logits max abs Δ {float((after - before).abs().max()):.1e}, "
            f"trainable {before_params} → {trainable} (still trainable)")


def _probe_folding_peft(length: int, inputs: dict) -> str:
    from peft import PeftModel
    from safetensors.torch import load_file

    model = apply_peft(build_bart("tiny", 0), length, prefix_projection=True, encoder_hidden_size=8)
    _perturb(_trainable(model))
    model.eval()
    with torch.no_grad():
        before = model(**inputs).logits
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        saved = {k: list(v.shape) for k, v in load_file(str(Path(tmp) / "adapter_model.safetensors")).items()}
        reloaded = PeftModel.from_pretrained(build_bart("tiny", 0), tmp).eval()
        with torch.no_grad():
            diff = float((reloaded(**inputs).logits - before).abs().max())
        try:
            PeftModel.from_pretrained(build_bart("tiny", 0), tmp, is_trainable=True)
            resume = "reload as trainable works"
        except Exception as err:  # noqa: BLE001
            resume = f"reload as trainable: {_error(err)}"
    return f"at save only: saved {saved}, reload logits max abs Δ {diff:.1e}; {resume}"


def _probe_wrong_backbone(method: str, length: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        model = APPLY[method](build_bart("tiny", 0), length)
        other = build_bart("tiny", 1)
        try:
            if method == "mmprompt":
                from mmprompt.tuning import load_prompt, save_prompt

                save_prompt(model, tmp)
                load_prompt(other, tmp)
            else:
                from peft import PeftModel

                model.save_pretrained(tmp)
                PeftModel.from_pretrained(other, tmp)
        except ValueError as err:
            return f"yes: {_error(err)}"
    return "no: loaded onto a backbone with other weights without complaint"


def _probe_depth(method: str, length: int, inputs: dict) -> str:
    if method == "mmprompt":
        reached = _probe_sites(lambda: apply_mmprompt(build_bart("tiny", 0), length, sites=KINDS, depth=1), inputs)
        return f"yes: depth=1 reaches {reached}"
    import dataclasses

    from peft import PrefixTuningConfig

    names = {f.name for f in dataclasses.fields(PrefixTuningConfig)}
    selectors = sorted(names & {"layers_to_transform", "layers_pattern", "leave_out", "depth", "layers"})
    if selectors:
        return f"maybe: PrefixTuningConfig fields {selectors}"
    try:
        reached = _probe_sites(lambda: apply_peft(build_bart("tiny", 0), length, num_layers=1), inputs)
        return f"no layer-selection field; num_layers=1 reaches {reached}"
    except Exception as err:  # noqa: BLE001
        return f"no: no layer-selection field in PrefixTuningConfig; num_layers=1 → {_error(err)}"


def probe_features(length: int = 3, seed: int = 0) -> dict[str, dict[str, str]]:
    """The feature table, {feature: {method: finding}}, probed on tiny random BARTs (2+2 layers, seed 0);
    ``seed`` draws the probe inputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _probe_features(length, seed)


def _probe_features(length: int, seed: int) -> dict[str, dict[str, str]]:
    inputs = _batch(PRESETS["tiny"]["vocab"], 2, 6, 4, seed)
    makers = {
        "mmprompt": lambda: apply_mmprompt(build_bart("tiny", 0), length, sites=KINDS),
        "peft": lambda: apply_peft(build_bart("tiny", 0), length),
    }
    total = PRESETS["tiny"]["layers"]
    table: dict[str, dict[str, str]] = {}
    sites = {m: _probe_sites(make, inputs) for m, make in makers.items()}
    for kind, label in zip(KINDS, ("encoder self-attention", "decoder self-attention", "cross-attention")):
        table[label] = {m: _layers_text(sites[m][kind], total) for m in makers}
    equal = {
        "mmprompt": _probe_sites(lambda: apply_mmprompt(build_bart("tiny", 0), length), inputs),
        "peft": sites["peft"],
    }
    table["sites of the timed configurations"] = {m: str({k: v for k, v in r.items() if v}) for m, r in equal.items()}
    table["depth control"] = {m: _probe_depth(m, length, inputs) for m in makers}
    source = inputs["input_ids"]
    table["greedy generate"] = {m: _probe_generation(make, source, 1) for m, make in makers.items()}
    table["beam search (3 beams)"] = {m: _probe_generation(make, source, 3) for m, make in makers.items()}
    table["gradient checkpointing"] = {m: _probe_checkpointing(m, length, inputs) for m in makers}
    table["MLP reparameterisation folding"] = {
        "mmprompt": _probe_folding_mmprompt(length, inputs), "peft": _probe_folding_peft(length, inputs),
    }
    table["refuses a prompt saved on another backbone"] = {m: _probe_wrong_backbone(m, length) for m in makers}
    return table


# ------------------------------------------------------------------ running and reporting


def run(preset: str = "bart-base", length: int = 64, batch: int = 2, src_len: int = 64, tgt_len: int = 16,
        warmup: int = 2, reps: int = 5, seed: int = 0, threads: int | None = 1, device: str = "cpu",
        features: bool = True, rounds: int = 1, in_process: bool = False) -> dict[str, Any]:
    """Measure both methods (fresh processes unless ``in_process``; see the module docstring) ``rounds``
    times and probe the features; returns the report."""
    _check(preset, length, batch, src_len, tgt_len, warmup, reps, device)
    check_int("rounds", rounds, 1)
    if not peft_available():
        return {"skipped": PEFT_MISSING}
    import peft
    import transformers

    args = (preset, length, batch, src_len, tgt_len, warmup, reps, seed, threads, device)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    memory: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    trainable: dict[str, int] = {}
    for _ in range(rounds):
        timed = call(measure_time, args, in_process)
        trainable = timed["trainable"]
        for method in METHODS:
            times[method] += timed["times"][method]
            memory[method].append(call(measure_memory, (method, *args), in_process))
    results = {
        m: asdict(StepCost(m, trainable[m], statistics.median(times[m]), times[m],
                           statistics.median(r["step_memory_mb"] for r in memory[m]),
                           statistics.median(r["peak_total_mb"] for r in memory[m]), device))
        for m in METHODS
    }
    paired = [a / b for a, b in zip(times["mmprompt"], times["peft"], strict=True)]
    mm, pf = results["mmprompt"], results["peft"]
    report: dict[str, Any] = {
        "preset": preset, "shape": PRESETS[preset], "length": length, "batch": batch, "src_len": src_len,
        "tgt_len": tgt_len, "warmup": warmup, "reps": reps, "rounds": rounds, "in_process": in_process,
        "threads": threads or torch.get_num_threads(),
        "device": device, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                       "peft": peft.__version__},
        "results": results,
        "time_ratio": statistics.median(paired),
        "time_ratio_of_medians": mm["step_seconds"] / pf["step_seconds"],
        "memory_ratio": (mm["step_memory_mb"] / pf["step_memory_mb"]) if pf["step_memory_mb"] > 0 else None,
        "peak_total_ratio": mm["peak_total_mb"] / pf["peak_total_mb"],
    }
    if features:
        report["features"] = probe_features(seed=seed)
    return report


def _check(preset, length, batch, src_len, tgt_len, warmup, reps, device) -> None:
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: allowed {list(PRESETS)}")
    for name, value, low in (("length", length, 1), ("batch", batch, 1), ("src_len", src_len, 1),
                             ("tgt_len", tgt_len, 1), ("warmup", warmup, 0), ("reps", reps, 1)):
        check_int(f"{name}", value, low)
    if src_len + length > PRESETS[preset]["max_positions"] or tgt_len + length > PRESETS[preset]["max_positions"]:
        raise ValueError(f"src_len/tgt_len + length exceed the preset's {PRESETS[preset]['max_positions']} positions")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: allowed 'cpu', 'cuda', 'cuda:N'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables of the cost comparison and the feature table."""
    if "skipped" in report:
        return f"skipped: {report['skipped']}"
    v = report["versions"]
    lines = [
        f"{report['preset']} shape {report['shape']}, prefix length {report['length']}, batch {report['batch']}, "
        f"source {report['src_len']}, target {report['tgt_len']}, {report['threads']} thread(s), {report['device']}, "
        f"{report['rounds']} round(s) × {report['reps']} steps{' in one process' if report['in_process'] else ''}; "
        f"torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}",
        "",
        "| method (decoder self-attention only) | trainable | step time (median, s) | step memory (MB) "
        "| peak total (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["results"].values():
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['step_seconds']:.3f} | {r['step_memory_mb']:.1f} | "
                     f"{r['peak_total_mb']:.0f} |")
    verdict = "meets" if report["time_ratio"] <= TARGET_TIME_RATIO else "misses"
    memory = "n/a" if report["memory_ratio"] is None else f"{report['memory_ratio']:.2f}×"
    lines += ["", f"mmprompt / PEFT: step time {report['time_ratio']:.2f}× (median of paired steps; {verdict} the "
              f"≤ {TARGET_TIME_RATIO}× target; ratio of medians {report['time_ratio_of_medians']:.2f}×), "
              f"step memory {memory}, peak total {report['peak_total_ratio']:.2f}×"]
    if "features" in report:
        lines += ["", "| feature (probed) | mmprompt | PEFT prefix tuning |", "|---|---|---|"]
        for feature, row in report["features"].items():
            lines.append(f"| {feature} | {row['mmprompt']} | {row['peft']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.bench peers", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="bart-base", choices=list(PRESETS))
    parser.add_argument("--length", type=int, default=64, help="prefix length (both methods)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--src-len", type=int, default=64)
    parser.add_argument("--tgt-len", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the measurements, pooling the steps")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (no fresh processes)")
    parser.add_argument("--no-features", action="store_true", help="skip the feature probes")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    if not peft_available():
        print(f"skipped: {PEFT_MISSING}")
        return 0
    report = run(args.preset, args.length, args.batch, args.src_len, args.tgt_len, args.warmup, args.reps,
                 args.seed, args.threads or None, args.device, not args.no_features, args.rounds, args.in_process)
    print(format_report(report))
    if args.json:
        write_json(Path(args.json), report, default=str)
    return 0

