"""Entry point kept for ``python -m mmprompt.notebook_tools``; the code lives in :mod:`mmprompt.workbook.notebook_tools`."""

from mmprompt.workbook.notebook_tools import main

if __name__ == "__main__":
    raise SystemExit(main())
