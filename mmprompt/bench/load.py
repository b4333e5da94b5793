"""How long a fresh Python process takes to load a shipped checkpoint (target: under 2 s for ``ofa-nano``).

``python -m mmprompt.bench load [--model ofa-nano] [--reps 5] [--target 2.0]``

Each repetition is a new interpreter that imports :mod:`mmprompt` and calls :func:`mmprompt.load_model`
(weights, config and tokenizer from the checkout; no network), so the figure is what a user waits for in
a new notebook kernel: import time and load time are reported apart, with their medians. Exits 1 when the
median total is over ``--target``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import mmprompt
t1 = time.perf_counter()
mmprompt.load_model(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def measure(model: str, reps: int) -> list[dict[str, float]]:
    """``reps`` fresh-process timings of importing mmprompt and loading ``model``."""
    rows = []
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", _CHILD, model], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({**row, "total_s": row["import_s"] + row["load_s"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmprompt.bench load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ofa-nano", help="a shipped name or a checkpoint directory")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--target", type=float, default=2.0, help="seconds the median total may take")
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error(f"--reps={a.reps}: must be >= 1")
    rows = measure(a.model, a.reps)
    median = {k: statistics.median(r[k] for r in rows) for k in ("import_s", "load_s", "total_s")}
    print(f"{a.model}: {a.reps} fresh processes")
    print("| | import mmprompt | load_model | total |\n|---|---:|---:|---:|")
    for i, r in enumerate(rows, 1):
        print(f"| run {i} | {r['import_s']:.2f} s | {r['load_s']:.2f} s | {r['total_s']:.2f} s |")
    print(f"| median | {median['import_s']:.2f} s | {median['load_s']:.2f} s | {median['total_s']:.2f} s |")
    verdict = "within" if median["total_s"] <= a.target else "OVER"
    print(f"median total / target = {median['total_s'] / a.target:.2f} ({verdict} the {a.target:g} s target)")
    return 0 if median["total_s"] <= a.target else 1
