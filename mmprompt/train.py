"""The training loop (one loop for every tuning method); see :mod:`mmprompt.training`.

>>> from mmprompt.train import TrainConfig, train
>>> result = train(model, dataset, TrainConfig(lr=0.03, max_steps=1000, out_dir="runs/x"),
...                collate_fn=collate, eval_fn=evaluate)            # doctest: +SKIP
"""

from mmprompt.training import *  # noqa: F401,F403
from mmprompt.training import __all__  # noqa: F401
