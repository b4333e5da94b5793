"""Entry point kept for ``python -m mmprompt.pretrain``; the code lives in :mod:`mmprompt.nano.pretrain`."""

from mmprompt.nano.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
