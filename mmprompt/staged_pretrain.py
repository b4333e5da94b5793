"""Entry point kept for ``python -m mmprompt.staged_pretrain``; the code lives in
:mod:`mmprompt.nano.staged_pretrain`."""

from mmprompt.nano.staged_pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
