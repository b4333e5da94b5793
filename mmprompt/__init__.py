"""mmprompt: prefix tuning of generative multimodal encoder-decoders."""

__version__ = "0.1.0"
