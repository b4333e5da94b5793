"""Entry point kept for ``python -m mmprompt.tune_cli``; the code lives in :mod:`mmprompt.experiment.cli`."""

from mmprompt.experiment.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
