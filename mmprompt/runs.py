"""Entry point kept for ``python -m mmprompt.runs``; the code lives in :mod:`mmprompt.workbook.runs`."""

from mmprompt.workbook.runs import main

if __name__ == "__main__":
    raise SystemExit(main())
