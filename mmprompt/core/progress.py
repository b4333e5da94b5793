"""Progress bars: ``tqdm.auto`` (a widget in Jupyter), or plain text bars when the environment variable
:data:`mmprompt.core.env.TEXT_PROGRESS` is ``"1"``.

The papermill runner sets it in the kernel's environment: a widget bar saved in an executed
notebook has no state and shows its first frame ("0/600"), while a text bar's last frame survives in the
saved stderr output (the runner keeps only each line's final state, see :mod:`mmprompt.workbook.runs`).
"""

from __future__ import annotations

import os
from typing import Any

from mmprompt.core import env


def progress_bar(*args: Any, **kwargs: Any):
    """A ``tqdm`` bar: the text one when ``os.environ[env.TEXT_PROGRESS] == "1"``, else ``tqdm.auto``'s choice."""
    if os.environ.get(env.TEXT_PROGRESS) == "1":
        from tqdm.std import tqdm

        kwargs.setdefault("ncols", 100)
        kwargs.pop("dynamic_ncols", None)
    else:
        from tqdm.auto import tqdm
    return tqdm(*args, **kwargs)
