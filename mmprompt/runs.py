"""Entry point kept for ``python -m mmprompt.runs``; the code lives in :mod:`mmprompt.workbook.runs_cli`."""

from mmprompt.workbook.runs_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
