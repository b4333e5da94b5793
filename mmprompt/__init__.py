"""mmprompt: prefix tuning of generative multimodal encoder-decoders.

The public entry points are re-exported here lazily (importing ``mmprompt`` stays cheap):
``load_model``, ``tune``, ``tune_seeds``, ``results_table``, ``get_profile``.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "mmprompt.experiment.backbones",
    "tune": "mmprompt.experiment.tune",
    "results_table": "mmprompt.experiment.tune",
    "tune_seeds": "mmprompt.experiment.seeds",
    "get_profile": "mmprompt.experiment.profiles",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mmprompt' has no attribute {name!r}")
