"""One tuning run from the command line, single-process or data-parallel under ``torchrun``.

    python -m mmprompt.tune_cli --model-dir /ckpt/ofa-large --data-dir /data/ofa --task refcoco \\
        --method prefix --profile gpu --out runs/refcoco-prefix.json
    torchrun --nproc_per_node 8 -m mmprompt.tune_cli ...            # the same run on 8 GPUs

:func:`mmprompt.tune` with the profile's recipe (``--recipe '{"epochs": 50}'`` overrides fields of it).
Under ``torchrun`` every rank trains its share of each batch and decodes its share of every evaluated
split; the result (metrics, predictions of the validation split, history) is the same on every rank and
only rank 0 writes ``--out`` and prints the summary.

With ``--out-dir`` the run keeps resume points there; after a crash or a kill, the same command with
``--resume`` continues it (same seed and threads: the same weights and metrics). An ``--out-dir`` that holds a
run is never restarted over without ``--resume``, and one that is, contains or lies inside ``--model-dir`` is
refused. Bad input exits with 2, a non-finite loss with 3, each with a one-line message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from mmprompt.core.checks import check_apart
from mmprompt.training.distributed import barrier, is_main_process

logger = logging.getLogger("mmprompt.experiment.cli")


def _recipe(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--recipe {text!r} is not JSON ({exc.msg}); e.g. '{{\"epochs\": 50}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"--recipe {text!r}: expected a JSON object of profile fields")
    return value


def build_parser() -> argparse.ArgumentParser:
    from mmprompt.tuning.registry import METHODS
    from mmprompt.data.tasks import TASKS
    from mmprompt.experiment.profiles import PROFILES

    p = argparse.ArgumentParser(prog="python -m mmprompt.tune_cli", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="a shipped name (ofa-nano) or a model directory")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--method", default="prefix", choices=sorted(METHODS))
    p.add_argument("--profile", default="gpu", choices=sorted(PROFILES))
    p.add_argument("--data-dir", default=None, help="real data in OFA's TSV layout (required by the gpu profile)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process")
    p.add_argument("--eval-examples", type=int, default=None)
    p.add_argument("--recipe", default=None, help="JSON object of profile fields, e.g. '{\"epochs\": 50}'")
    p.add_argument("--out-dir", default=None, help="checkpoints and metrics.jsonl of the training loop (never "
                   "replaced: an --out-dir holding a run needs --resume; it may not overlap --model-dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last checkpoint")
    p.add_argument("--out", default=None, help="write the result as JSON here (rank 0 only)")
    p.add_argument("--no-test-splits", action="store_true", help="score the validation split only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mmprompt.core.atomic import write_json
    from mmprompt.experiment.backbones import load_model, model_path
    from mmprompt.experiment.tune import tune
    from mmprompt.training import NonFiniteLossError

    try:
        recipe = _recipe(args.recipe)
        if args.out_dir is not None:
            check_apart("--out-dir", args.out_dir, "--model-dir", model_path(args.model_dir))
        backbone = load_model(args.model_dir, seed=args.seed)
        result = tune(backbone, args.task, args.method, profile=args.profile, data_dir=args.data_dir,
                      seed=args.seed, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                      eval_examples=args.eval_examples, test_splits=not args.no_test_splits, out_dir=args.out_dir,
                      progress=is_main_process(), recipe=recipe, resume=args.resume)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    except NonFiniteLossError as exc:
        logger.error("%s", exc)
        return 3
    if is_main_process():
        record = {k: v for k, v in dataclasses.asdict(dataclasses.replace(result, model=None)).items()
                  if k != "model" and not k.startswith("_")}
        record.update(model_dir=str(args.model_dir), data_dir=args.data_dir, profile=args.profile, recipe=recipe,
                      intervals={s: result.interval(s).as_dict() for s, v in result.per_example.items() if len(v) > 1})
        if args.out:
            write_json(args.out, record, sort_keys=True, allow_nan=False)
        logger.info("%s / %s: %s = %.4f (validation), %s trainable parameters", args.task, result.method,
                    result.metric, result.score, f"{result.trainable:,}")
    barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
