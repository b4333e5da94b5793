"""``python -m mmprompt.runs``: execute notebooks with papermill, sweep parameter grids, write the report.

    python -m mmprompt.runs run NOTEBOOK [NOTEBOOK ...] [-p NAME VALUE ...] [--profile ci|cpu|gpu] [--out DIR] [--force]
    python -m mmprompt.runs sweep NOTEBOOK [NOTEBOOK ...] -p length 10 16 32 [-p seed 0 1] [--profile cpu]
    python -m mmprompt.runs report [--root papermill_runs] [--out papermill_runs/REPORT.md]

Exit codes: 0 all runs ok or skipped, 1 a run failed, 2 bad input (nothing ran), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmprompt.workbook.params import PROFILES, parse_value
from mmprompt.workbook.records import DEFAULT_OUT
from mmprompt.workbook.runs import DEFAULT_KERNEL, RunConfig, run_grid, summarize

log = logging.getLogger(__name__)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.runs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "execute each notebook once"),
                        ("sweep", "execute the cartesian grid of -p lists for each notebook")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("notebook", type=Path, nargs="+", help="notebook(s) to execute, in order")
        p.add_argument("-p", "--parameter", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                       help="parameter NAME and its value"
                       + (" (several values: one run each)" if name == "sweep" else ""))
        p.add_argument("--profile", choices=PROFILES, help="shorthand for -p profile VALUE")
        p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"root of run directories ({DEFAULT_OUT})")
        p.add_argument("--force", action="store_true", help="rerun runs that are already done")
        p.add_argument("--kernel", default=DEFAULT_KERNEL, help=f"Jupyter kernel name ({DEFAULT_KERNEL})")
        p.add_argument("--allow-no-metrics", action="store_true", help="a run that writes no metrics.json is ok")
        p.add_argument("--log-output", action="store_true", help="stream the notebook's output to the log")
        p.add_argument("--execution-timeout", type=int, default=None, help="per-cell timeout in seconds")
        p.add_argument("--start-timeout", type=int, default=60, help="kernel start timeout in seconds")
    rep = sub.add_parser("report", help="aggregate metrics.json of all runs into Markdown + PNG figures")
    rep.add_argument("--root", type=Path, default=Path(DEFAULT_OUT))
    rep.add_argument("--out", type=Path, default=None, help="Markdown file (default <root>/REPORT.md)")
    return parser


def _grid_from_args(args: argparse.Namespace) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for entry in args.parameter:
        name, values = entry[0], entry[1:]
        if not values:
            raise ValueError(f"-p {name} needs a value")
        if args.command == "run" and len(values) != 1:
            raise ValueError(f"-p {name} got {len(values)} values {values}; `run` takes one (use `sweep` for several)")
        if name in grid:
            raise ValueError(f"parameter {name!r} is given twice")
        grid[name] = [parse_value(v) for v in values]
    if args.profile is not None:
        if "profile" in grid:
            raise ValueError("give the profile either with --profile or with -p profile, not both")
        grid = {"profile": [args.profile], **grid}
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (1 when any run failed, 2 on bad input)."""
    args = _build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "report":
            from mmprompt.workbook.report import write_report

            path = write_report(args.root, args.out)
            log.info("report written to %s", path)
            return 0
        grid = _grid_from_args(args)
        config = RunConfig(out=args.out, force=args.force, kernel_name=args.kernel,
                           require_metrics=not args.allow_no_metrics, log_output=args.log_output,
                           progress_bar=len(args.notebook) == 1 and all(len(v) == 1 for v in grid.values())
                           and sys.stderr.isatty(),
                           execution_timeout=args.execution_timeout, start_timeout=args.start_timeout)
        results = run_grid(args.notebook, grid, config)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; the failure record of the interrupted run is kept under _failed/")
        return 130
    summary = summarize(results)
    failed = any(r.status == "failed" for r in results)
    (log.error if failed else log.info)("%s", summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
