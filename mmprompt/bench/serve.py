"""Serving four tasks from one frozen backbone: a mixed batch vs four single-task batches vs four models.

``python -m mmprompt.bench serve [--preset ofa-base] [--nano data/checkpoints/ofa-nano] [--batch 16]
[--length 64] [--decode-len 16] [--src-len 32] [--image-size 256] [--reps 3] [--quick] [--json F]``

Two backbones are measured in one run: the ``--preset`` shape with seeded random weights, and the shipped
nano checkpoint (``--nano``; ``--no-nano`` skips it). Each gets four prompts (one per task, length
``--length``, every layer of the encoder and decoder self-attention, seeded random values: serving cost
does not depend on what a prompt learnt) in a :class:`~mmprompt.tuning.bank.PromptBank`, and one batch
of ``--batch`` rows (``--src-len`` text tokens and a ``--image-size`` image each), the tasks alternating
row by row. Every contender answers the same rows with a greedy decode of exactly ``--decode-len``
tokens (``--beam k``: beam search) with the cache:

* ``mixed``: the whole batch in one call, each row routed to its task's prompt;
* ``single``: the whole batch in one call with one prompt on every row (what a one-task server runs:
  the same computation as :func:`~mmprompt.tuning.prefix.apply_prefix`) — the reference of the
  mixed-batch overhead;
* ``four_batches``: the rows of each task as their own batch, four calls on the one backbone;
* ``four_models``: four separately finetuned models (copies of the backbone, no prompt), each answering
  its task's rows.

**Throughput** (rows/s): all contenders live in one process and their calls are interleaved, the order
rotating each repetition (``--warmup`` unmeasured, then ``--reps``); ratios are medians of per-repetition
ratios. That process (a fresh one unless ``--in-process``) keeps freed memory (:func:`keep_freed_memory`),
so page faults do not decide the race. **Memory**: each contender alone in a fresh spawned process: the weights it holds, and the peak
resident set size during its calls over what it held before (``step_memory_mb``) and in total.
**Disk**: the backbone written with ``save_pretrained`` and the four prompts with
:meth:`~mmprompt.tuning.bank.PromptBank.save` (safetensors + JSON); a finetuned copy is a backbone
checkpoint, so four copies are four times its files. **Answers**: the mixed batch must give the tokens
of the four single-task batches (checked every run).

Targets (issue #20): mixed ≥ 0.9× single, ≥ 2× four_batches at batch ≥ 16; disk (one backbone + four
prompts) ≤ 0.3× four copies at nano, ≤ 0.05× at ofa-base.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmprompt.core.checks import check_int
from mmprompt.bench.common import MB, call, interleaved, measure_peak, paired_ratio, setup_process, timed
from mmprompt.core.atomic import write_json

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("refcoco", "snli_ve", "caption", "vqa")
CONTENDERS: tuple[str, ...] = ("mixed", "single", "four_batches", "four_models")
TARGETS = {"mixed_vs_single": 0.9, "mixed_vs_four_batches": 2.0, "disk_nano": 0.3, "disk_ofa-base": 0.05}
NANO_DIR = "data/checkpoints/ofa-nano"


@dataclass(frozen=True)
class Workload:
    """One backbone (a preset with random weights, or a checkpoint directory) and the batch it serves."""

    backbone: str = "ofa-base"  # a preset name, or a checkpoint directory
    batch: int = 16
    src_len: int = 32
    image_size: int = 256
    length: int = 64
    decode_len: int = 16
    beam: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("batch", len(TASKS)), ("src_len", 3), ("image_size", 16), ("length", 1),
                          ("decode_len", 1), ("beam", 1), ("seed", 0)):
            value = getattr(self, name)
            check_int(f"{name}", value, low)
        if self.batch % len(TASKS):
            raise ValueError(f"batch={self.batch}: must be a multiple of {len(TASKS)} (the tasks share it evenly)")

    @property
    def is_checkpoint(self) -> bool:
        from mmprompt.models.ofa.config import PRESETS

        return self.backbone not in PRESETS


def build_model(work: Workload):
    """The backbone: ``from_pretrained`` for a directory, a seeded random ``OFAModel`` for a preset."""
    from mmprompt.models.ofa import OFAModel
    from mmprompt.models.ofa.config import OFAConfig
    from mmprompt.models.ofa.loading import from_pretrained

    if work.is_checkpoint:
        return from_pretrained(work.backbone).eval()
    return OFAModel(OFAConfig.from_preset(work.backbone), seed=work.seed).eval()


def rows_tasks(work: Workload) -> list[str]:
    """The task of each row: the four tasks alternate."""
    return [TASKS[i % len(TASKS)] for i in range(work.batch)]


def make_inputs(cfg, work: Workload) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(work.seed + 1)
    ids = torch.randint(4, cfg.vocab_size, (work.batch, work.src_len), generator=gen)
    ids[:, 0], ids[:, -1] = cfg.bos_token_id, cfg.eos_token_id
    return {"input_ids": ids,
            "patch_images": torch.rand(work.batch, 3, work.image_size, work.image_size, generator=gen) * 2 - 1,
            "patch_masks": torch.ones(work.batch, dtype=torch.bool)}


class Server:
    """A backbone with a bank of four prompts (and, for ``four_models``, four plain copies)."""

    def __init__(self, work: Workload, contenders: tuple[str, ...]) -> None:
        self.work = work
        self.model = build_model(work)
        self.inputs = make_inputs(self.model.config, work)
        self.tasks = rows_tasks(work)
        self.copies = ({t: copy.deepcopy(self.model) for t in TASKS} if "four_models" in contenders else {})
        self.bank = _bank(self.model, work)
        self.rows = {t: [i for i, r in enumerate(self.tasks) if r == t] for t in TASKS}

    def _decode(self, model, inputs: dict[str, torch.Tensor]) -> list[list[int]]:
        from mmprompt.eval.decoding import beam_search, greedy_search

        n = self.work.decode_len
        if self.work.beam == 1:
            return [h.tokens for h in greedy_search(model, inputs, max_len=n, min_len=n)]
        return [h[0].tokens for h in beam_search(model, inputs, beam_size=self.work.beam, max_len=n, min_len=n,
                                                  n_best=1)]

    def _subset(self, task: str) -> dict[str, torch.Tensor]:
        index = torch.tensor(self.rows[task])
        return {k: v.index_select(0, index) for k, v in self.inputs.items()}

    @torch.no_grad()
    def answer(self, contender: str) -> list[list[int]]:
        """The tokens of every row, in row order, as ``contender`` produces them."""
        if contender in ("mixed", "single"):
            route = self.tasks if contender == "mixed" else [TASKS[0]] * len(self.tasks)
            with self.bank.route(route):
                return self._decode(self.model, self.inputs)
        out: list[list[int] | None] = [None] * len(self.tasks)
        for task in TASKS:
            if contender == "four_batches":
                with self.bank.route([task] * len(self.rows[task])):
                    tokens = self._decode(self.model, self._subset(task))
            elif contender == "four_models":
                tokens = self._decode(self.copies[task], self._subset(task))
            else:
                raise ValueError(f"contender={contender!r}: allowed {CONTENDERS}")
            for i, t in zip(self.rows[task], tokens):
                out[i] = t
        return out

    def weights_bytes(self, contender: str) -> int:
        """Parameter bytes the contender keeps in memory."""
        backbone = sum(p.numel() * p.element_size() for n, p in self.model.named_parameters()
                       if not n.startswith("mmprompt_bank."))
        if contender == "four_models":
            return len(TASKS) * backbone
        return backbone + (self.bank.storage_bytes() if contender == "mixed" else
                           self.bank.storage_bytes(TASKS[0]) if contender == "single" else self.bank.storage_bytes())


# ------------------------------------------------------------------ measurements (may run in fresh processes)
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory (no trimming, no mmap per large allocation), as tcmalloc or
    jemalloc do. Otherwise every call returns its large buffers to the system and faults them back in, and
    those page faults, not the model, decide which contender is faster on CPU (measured: mixed vs single
    0.86× with glibc's defaults, 1.00× with this). Returns False where there is no glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    big = 2**30
    return all(libc.mallopt(option, big) == 1 for option in (m_trim_threshold, m_top_pad, m_mmap_threshold))


def measure_times(work: Workload, contenders: tuple[str, ...], warmup: int, reps: int,
                  threads: int | None, keep_memory: bool = True) -> dict[str, Any]:
    """Per-call seconds of every contender, interleaved in one process; plus the answer check. With
    ``keep_memory`` (a fresh process: the setting lasts as long as the process) malloc keeps freed memory."""
    setup_process(threads)
    kept = keep_freed_memory() if keep_memory else False
    server = Server(work, contenders)
    answers = {c: server.answer(c) for c in contenders}
    same = answers["mixed"] == answers["four_batches"] if "four_batches" in answers else None
    steps: dict[str, Callable[[], float]] = {c: (lambda c=c: timed(lambda: server.answer(c))) for c in contenders}
    return {"times": interleaved(steps, warmup, reps), "mixed_equals_four_batches": same, "malloc_keeps_freed": kept,
            "weights_mb": {c: server.weights_bytes(c) / MB for c in contenders},
            "prompt_parameters": sum(p.numel() for p in server.bank.prompt(TASKS[0]).parameters()),
            "backbone_parameters": sum(p.numel() for n, p in server.model.named_parameters()
                                       if not n.startswith("mmprompt_bank."))}


def measure_memory(work: Workload, contender: str, threads: int | None) -> dict[str, float]:
    """One contender's peak memory during one call (meant to run alone in a fresh process)."""
    setup_process(threads)
    server = Server(work, (contender,))
    return measure_peak(lambda: server.answer(contender))


def measure_disk(work: Workload) -> dict[str, float]:
    """Bytes on disk: the backbone checkpoint, the four prompts, and their ratios to four finetuned copies."""
    from mmprompt.models.ofa.loading import save_pretrained

    model = build_model(work)
    with tempfile.TemporaryDirectory(prefix="mmprompt-serve-") as tmp:
        root = Path(tmp)
        backbone = _dir_bytes(save_pretrained(model, root / "backbone"))  # before the bank is attached
        bank = _bank(model, work)
        prompts = sum(_dir_bytes(bank.save(t, root / "prompts" / t)) for t in TASKS)
    copies = len(TASKS) * backbone
    return {"backbone_mb": backbone / MB, "prompts_mb": prompts / MB, "four_copies_mb": copies / MB,
            "bank_mb": (backbone + prompts) / MB, "disk_ratio": (backbone + prompts) / copies,
            "prompts_vs_copies": prompts / copies}


def _bank(model, work: Workload):
    """A bank of four prompts (one per task, seeded) on ``model``."""
    from mmprompt.tuning import PrefixConfig
    from mmprompt.tuning.bank import apply_bank

    bank = apply_bank(model)
    for i, task in enumerate(TASKS):
        bank.add(task, PrefixConfig(length=work.length, dropout=0.0, seed=work.seed + i))
    return bank


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


# ------------------------------------------------------------------ the report
def run_one(work: Workload, contenders: tuple[str, ...] = CONTENDERS, warmup: int = 1, reps: int = 3,
            threads: int | None = None, memory: bool = True, in_process: bool = False) -> dict[str, Any]:
    """Measure one backbone (see the module docstring)."""
    mem = {c: call(measure_memory, (work, c, threads), in_process) for c in contenders} if memory else {}
    disk = call(measure_disk, (work,), in_process)
    timed_ = call(measure_times, (work, contenders, warmup, reps, threads, not in_process), in_process)
    times = timed_["times"]
    rows = {}
    for c in contenders:
        row = {"contender": c, "seconds": statistics.median(times[c]), "seconds_all": times[c],
               "rows_per_s": work.batch / statistics.median(times[c]), "weights_mb": timed_["weights_mb"][c]}
        if "mixed" in times:  # throughput of mixed over this one's = time of this one over mixed's
            row["mixed_speedup"] = paired_ratio(times[c], times["mixed"])
        row.update(mem.get(c, {}))
        rows[c] = row
    return {"workload": dataclasses.asdict(work), "results": rows, "disk": disk,
            "mixed_equals_four_batches": timed_["mixed_equals_four_batches"],
            "malloc_keeps_freed": timed_["malloc_keeps_freed"],
            "prompt_parameters": timed_["prompt_parameters"], "backbone_parameters": timed_["backbone_parameters"]}


def run(works: list[Workload], contenders: tuple[str, ...] = CONTENDERS, warmup: int = 1, reps: int = 3,
        threads: int | None = None, memory: bool = True, in_process: bool = False) -> dict[str, Any]:
    """Every workload, one after the other, plus the verdicts on the targets."""
    _check(contenders, warmup, reps)
    reports = [run_one(w, contenders, warmup, reps, threads, memory, in_process) for w in works]
    return {"runs": reports, "warmup": warmup, "reps": reps, "threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "targets": TARGETS}


def _check(contenders: tuple[str, ...], warmup: int, reps: int) -> None:
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad or not contenders or len(set(contenders)) != len(contenders) or "mixed" not in contenders:
        raise ValueError(f"contenders={list(contenders)!r}: distinct values from {list(CONTENDERS)}, with 'mixed'")
    for name, value, low in (("warmup", warmup, 0), ("reps", reps, 1)):
        check_int(f"{name}", value, low)


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def _label(work: dict[str, Any]) -> str:
    name = work["backbone"]
    return f"{Path(name).name} (shipped)" if "/" in name else f"{name} (random weights)"


def format_table(report: dict[str, Any]) -> str:
    """The report as Markdown: one table per backbone, then the verdicts."""
    lines = []
    for one in report["runs"]:
        w, d = one["workload"], one["disk"]
        decode = "greedy" if w["beam"] == 1 else f"beam {w['beam']}"
        lines += [
            f"**{_label(w)}**: batch {w['batch']} (4 tasks alternating), text {w['src_len']} + image "
            f"{w['image_size']}px, {decode} decode of {w['decode_len']} tokens; prompts of length {w['length']} "
            f"({one['prompt_parameters']:,} parameters each; backbone {one['backbone_parameters']:,}); "
            f"{report['threads']} threads, {report['reps']} interleaved reps",
            "",
            "| contender | calls | rows/s | mixed speed-up | weights MB | step memory MB | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in one["results"].values():
            calls = 1 if r["contender"] in ("mixed", "single") else len(TASKS)
            lines.append(
                f"| {r['contender']} | {calls} | {_fmt(r['rows_per_s'], '.2f')} | {_fmt(r.get('mixed_speedup'), '.2f')}× "
                f"| {_fmt(r['weights_mb'], '.1f')} | {_fmt(r.get('step_memory_mb'), '.0f')} "
                f"| {_fmt(r.get('peak_total_mb'), '.0f')} |")
        lines += ["", f"disk: backbone {d['backbone_mb']:.2f} MB + four prompts {d['prompts_mb']:.2f} MB = "
                      f"{d['bank_mb']:.2f} MB vs four finetuned copies {d['four_copies_mb']:.2f} MB: "
                      f"{d['disk_ratio']:.3f}× (the prompts alone {d['prompts_vs_copies']:.4f}×)", ""]
        lines += _verdicts(one)
        lines.append("")
    return "\n".join(lines).rstrip()


def _verdicts(one: dict[str, Any]) -> list[str]:
    rows, w, out = one["results"], one["workload"], []
    same = one["mixed_equals_four_batches"]
    if same is not None:
        out.append(f"mixed batch answers = the four single-task batches' answers, token for token: {'yes' if same else 'NO'}")
    if "single" in rows:
        v = rows["single"]["mixed_speedup"]  # single's time / mixed's = mixed's rows/s over single's
        out.append(f"mixed / single-prompt throughput: {v:.2f}× (target ≥ {TARGETS['mixed_vs_single']}×: "
                   f"{'meets' if v >= TARGETS['mixed_vs_single'] else 'misses'})")
    if "four_batches" in rows:
        v = rows["four_batches"]["mixed_speedup"]
        note = "" if w["batch"] >= 16 else " (target stated for batch ≥ 16)"
        out.append(f"mixed / four single-task batches throughput: {v:.2f}× (target ≥ "
                   f"{TARGETS['mixed_vs_four_batches']}×: {'meets' if v >= TARGETS['mixed_vs_four_batches'] else 'misses'})"
                   f"{note}")
    key = "disk_nano" if "nano" in w["backbone"] else f"disk_{w['backbone']}"
    if key in TARGETS:
        v = one["disk"]["disk_ratio"]
        out.append(f"disk, backbone + four prompts / four copies: {v:.3f}× (target ≤ {TARGETS[key]}×: "
                   f"{'meets' if v <= TARGETS[key] else 'misses'}; one backbone alone is 0.25× of four)")
    return out


#: What the workbook measures at each profile (``ci``: seconds; ``cpu``/``gpu``: the bench's defaults).
PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "ci": dict(batch=16, src_len=16, decode_len=4, warmup=0, reps=1, memory=False),
    "cpu": dict(batch=32, src_len=32, decode_len=16, warmup=1, reps=3, memory=True),
    "gpu": dict(batch=32, src_len=32, decode_len=16, warmup=1, reps=3, memory=True),
}


def run_at_profile(backbone: str, profile: str, length: int, image_size: int = 96, seed: int = 0) -> dict[str, Any]:
    """The four contenders on one backbone (a checkpoint directory or a preset) at a profile's settings."""
    if profile not in PROFILE_SETTINGS:
        raise ValueError(f"profile={profile!r}: allowed {sorted(PROFILE_SETTINGS)}")
    s = PROFILE_SETTINGS[profile]
    work = Workload(backbone, batch=s["batch"], src_len=s["src_len"], image_size=image_size, length=length,
                    decode_len=s["decode_len"], seed=seed)
    return run([work], warmup=s["warmup"], reps=s["reps"], memory=s["memory"], in_process=not s["memory"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.bench serve", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ofa-base", help="the random-weight backbone shape ('' to skip)")
    parser.add_argument("--nano", default=NANO_DIR, help="the shipped checkpoint measured beside it")
    parser.add_argument("--no-nano", action="store_true", help="skip the shipped checkpoint")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--src-len", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256, help="image side at the preset (nano: 96)")
    parser.add_argument("--length", type=int, default=64, help="prompt length (every layer of both stacks)")
    parser.add_argument("--decode-len", type=int, default=16)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory measurement")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (no fresh processes)")
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke run: ofa-nano-small shape, batch 8, 2 tokens, 1 rep, no memory")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.src_len, args.image_size, args.length = "ofa-nano-small", 8, 6, 32, 4
        args.decode_len, args.warmup, args.reps, args.no_memory = 2, 0, 1, True
    contenders = tuple(c.strip() for c in args.contenders.split(",") if c.strip())
    try:
        common = dict(batch=args.batch, src_len=args.src_len, length=args.length, decode_len=args.decode_len,
                      beam=args.beam, seed=args.seed)
        works = [Workload(args.preset, image_size=args.image_size, **common)] if args.preset else []
        if not args.no_nano:
            works.append(Workload(args.nano, image_size=min(args.image_size, 96), **common))
        if not works:
            raise ValueError("nothing to measure: give --preset or leave the nano checkpoint on")
        _check(contenders, args.warmup, args.reps)
    except ValueError as exc:
        parser.error(str(exc))
    report = run(works, contenders, args.warmup, args.reps, args.threads, memory=not args.no_memory,
                 in_process=args.in_process)
    print(format_table(report))
    if args.json:
        write_json(args.json, report, default=str)
    return 0
