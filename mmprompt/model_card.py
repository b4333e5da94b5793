"""Entry point kept for ``python -m mmprompt.model_card``; the code lives in :mod:`mmprompt.nano.model_card`."""

from mmprompt.nano.model_card import main

if __name__ == "__main__":
    raise SystemExit(main())
