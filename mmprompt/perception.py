"""Entry point kept for ``python -m mmprompt.perception``; the code lives in :mod:`mmprompt.nano.perception`."""

from mmprompt.nano.perception import main

if __name__ == "__main__":
    raise SystemExit(main())
