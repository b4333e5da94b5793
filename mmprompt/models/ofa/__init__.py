"""OFA (One For All) encoder-decoder, state-dict compatible with OFA-Sys' HF-format checkpoints."""

from .config import DEFAULT_PRESET, PRESETS, REAL_PRESETS, OFAConfig
from .loading import LoadReport, from_pretrained, save_pretrained
from .modeling import OFACache, OFAEncoderOutput, OFAModel, OFAOutput

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "REAL_PRESETS",
    "LoadReport",
    "OFACache",
    "OFAConfig",
    "OFAEncoderOutput",
    "OFAModel",
    "OFAOutput",
    "from_pretrained",
    "save_pretrained",
]
