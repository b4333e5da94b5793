"""OFA configuration: the published OFA-Sys sizes plus the project's small CPU presets.

Field names are those of OFA-Sys' HF-format ``config.json`` (branch ``feature/add_transformers``), so
``OFAConfig.from_json(ckpt_dir / "config.json")`` reads a real checkpoint's config. A few fields are
this project's extensions (marked below); they default to OFA's exact shapes so real checkpoints are
unaffected:

* ``resnet_layers`` / ``resnet_width``: blocks per ResNet stage and the stem/first-stage width. OFA's
  ResNets use width 64 (1024-channel output); the nano presets shrink both.
* ``patch_image_size``: the square image side the model expects (the data pipeline resizes to it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmprompt.core.checks import check_int, check_number, read_json

from .activations import ACT2FN

logger = logging.getLogger(__name__)

#: Blocks per stage of the three-stage bottleneck ResNets OFA uses (the fourth stage is dropped).
RESNET_LAYERS: dict[str, tuple[int, int, int]] = {
    "resnet18": (2, 2, 2),
    "resnet34": (3, 4, 6),
    "resnet50": (3, 4, 6),
    "resnet101": (3, 4, 23),
    "resnet152": (3, 8, 36),
}
ACTIVATIONS = tuple(ACT2FN)
RESNET_STRIDE = 16  # stem (4) × stage 2 (2) × stage 3 (2)


@dataclass
class OFAConfig:
    """Architecture and regularisation settings of an OFA encoder-decoder."""

    vocab_size: int = 59457
    max_position_embeddings: int = 1024
    d_model: int = 512
    encoder_layers: int = 4
    decoder_layers: int = 4
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    scale_embedding: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 0
    encoder_normalize_before: bool = True
    decoder_normalize_before: bool = True
    normformer: bool = True
    encoder_drop_path_rate: float = 0.0
    decoder_drop_path_rate: float = 0.0
    layernorm_embedding: bool = True
    patch_layernorm_embedding: bool = True
    code_layernorm_embedding: bool = True
    resnet_type: str = "resnet101"
    resnet_drop_path_rate: float = 0.0
    token_bucket_size: int = 256
    image_bucket_size: int = 42
    add_type_embedding: bool = True
    share_decoder_input_output_embed: bool = True
    attn_scale_factor: float = 2.0
    code_image_size: int = 128
    entangle_position_embedding: bool = False
    use_cache: bool = False
    # --- mmprompt extensions (not in OFA-Sys' config.json) ---
    resnet_layers: tuple[int, int, int] | None = None  # None: taken from resnet_type
    resnet_width: int = 64
    patch_image_size: int = 480
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown config.json fields, kept

    def __post_init__(self) -> None:
        if self.resnet_layers is None:
            if self.resnet_type not in RESNET_LAYERS:
                raise ValueError(
                    f"resnet_type={self.resnet_type!r} is unknown; allowed: {sorted(RESNET_LAYERS)} "
                    "(or give resnet_layers explicitly)"
                )
            self.resnet_layers = RESNET_LAYERS[self.resnet_type]
        self.resnet_layers = tuple(int(n) for n in self.resnet_layers)
        self._validate()

    # ------------------------------------------------------------------ validation
    def _check_types(self) -> None:
        """Every plain field has its declared type (``"dropout": "0.1"`` in a config.json is refused)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                check_int(f.name, value)
            elif f.type == "float":
                check_number(f.name, value)
            elif f.type in ("bool", "str") and not isinstance(value, bool if f.type == "bool" else str):
                raise ValueError(f"{f.name}={value!r}: allowed a {f.type}")

    def _validate(self) -> None:
        self._check_types()
        positive = (
            "vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers",
            "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
            "token_bucket_size", "image_bucket_size", "resnet_width", "patch_image_size", "code_image_size",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        for heads_name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, heads_name)
            if self.d_model % heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by {heads_name}={heads}")
        if len(self.resnet_layers) != 3 or min(self.resnet_layers) < 1:
            raise ValueError(f"resnet_layers={self.resnet_layers} must be three positive block counts")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r}; allowed: {ACTIVATIONS}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "encoder_drop_path_rate",
                     "decoder_drop_path_rate", "resnet_drop_path_rate"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1)")
        for name in ("encoder_layerdrop", "decoder_layerdrop"):
            if getattr(self, name) != 0.0:
                raise ValueError(f"{name}={getattr(self, name)} is not supported (only 0.0, as in OFA's checkpoints)")
        if self.token_bucket_size < 2 or self.token_bucket_size > self.max_position_embeddings:
            raise ValueError(
                f"token_bucket_size={self.token_bucket_size} must be in [2, max_position_embeddings="
                f"{self.max_position_embeddings}]"
            )
        if self.attn_scale_factor <= 0:
            raise ValueError(f"attn_scale_factor={self.attn_scale_factor} must be > 0")

    # ------------------------------------------------------------------ derived sizes
    @property
    def resnet_out_channels(self) -> int:
        """Channels of the ResNet's output feature map (1024 for OFA's width 64)."""
        return self.resnet_width * 4 * 4  # third stage has 4×width planes, bottleneck expansion 4

    @property
    def max_image_size(self) -> int:
        """Largest image side (pixels) whose patch grid fits the image bucket table."""
        return self.image_bucket_size * RESNET_STRIDE

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """HF-style dict (OFA-Sys field names, plus ``model_type`` and this project's extensions)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["resnet_layers"] = list(self.resnet_layers)
        out = dict(self.extra)
        out.update(data)
        out["model_type"] = "ofa"
        out["architectures"] = ["OFAModel"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OFAConfig":
        """Build from a ``config.json`` dict; unknown fields are kept in ``extra`` (and ignored)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k not in ("model_type", "architectures")}
        if data.get("model_type", "ofa") != "ofa":
            raise ValueError(f"model_type={data.get('model_type')!r} is not an OFA config (expected 'ofa')")
        if extra:
            logger.debug("config fields not used by mmprompt's OFA: %s", sorted(extra))
        if kwargs.get("resnet_layers") is not None:
            kwargs["resnet_layers"] = tuple(kwargs["resnet_layers"])
        if "patch_image_size" not in kwargs:  # an OFA-Sys config.json: the size is the matching preset's
            preset = matching_preset(kwargs)
            if preset is None:
                logger.warning("config has no patch_image_size and matches no preset: using %d; pass "
                               "patch_image_size=... to override", cls.patch_image_size)
            else:
                kwargs["patch_image_size"] = PRESETS[preset]["patch_image_size"]
                kwargs.setdefault("name", preset)
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, path: str | Path) -> "OFAConfig":
        """Read an OFA-Sys ``config.json`` (or one written by :meth:`save_json`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        return cls.from_dict(read_json(path, "config file"))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "OFAConfig":
        """A named preset (see :data:`PRESETS`), with optional field overrides (e.g. ``vocab_size``)."""
        if name not in PRESETS:
            raise ValueError(f"preset={name!r} is unknown; allowed: {list(PRESETS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown OFAConfig field(s) {bad}; allowed: {sorted(known)}")
        values = dict(PRESETS[name])
        values.update(overrides)
        return cls(name=name, **values)


def _real(d_model: int, enc: int, dec: int, heads: int, resnet: str, image: int) -> dict[str, Any]:
    return dict(
        d_model=d_model, encoder_layers=enc, decoder_layers=dec, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        resnet_type=resnet, patch_image_size=image,
    )


def _nano(d_model: int, layers: int, heads: int, resnet_width: int, image: int = 96) -> dict[str, Any]:
    return dict(
        vocab_size=2048,  # placeholder: set it from the nano tokenizer
        max_position_embeddings=256, token_bucket_size=64, image_bucket_size=16,
        d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        resnet_type="custom", resnet_layers=(1, 1, 1), resnet_width=resnet_width, patch_image_size=image,
        code_image_size=128,
    )


#: Named presets. Real sizes follow OFA-Sys' published configs (ofa-huge from fairseq's ``ofa_huge``);
#: ``patch_image_size`` is the model card / finetuning resolution. The nano presets are this project's
#: CPU models (96×96 images → 6×6 = 36 patches; image grid up to 16×16, i.e. 256 pixels). ``ofa-nano-large``
#: (world v3, not shipped yet) sees 128×128 images → 8×8 = 64 patches, as the v3 pretraining gives every size.
PRESETS: dict[str, dict[str, Any]] = {
    "ofa-tiny": _real(256, 4, 4, 4, "resnet50", 256),
    "ofa-medium": _real(512, 4, 4, 8, "resnet101", 256),
    "ofa-base": _real(768, 6, 6, 12, "resnet101", 384),
    "ofa-large": _real(1024, 12, 12, 16, "resnet152", 480),
    "ofa-huge": _real(1280, 24, 12, 16, "resnet152", 480),
    "ofa-nano": _nano(128, 6, 4, 16),
    "ofa-nano-small": _nano(64, 4, 4, 8),
    "ofa-nano-large": _nano(256, 8, 8, 32, image=128),
}
#: The fields that tell the presets apart (a config whose values all agree is that preset's architecture).
SHAPE_FIELDS = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim", "resnet_type")


def matching_preset(fields: dict[str, Any]) -> str | None:
    """The preset whose :data:`SHAPE_FIELDS` equal ``fields``' (absent fields take OFAConfig's defaults)."""
    defaults = {f.name: f.default for f in dataclasses.fields(OFAConfig) if f.name in SHAPE_FIELDS}
    shape = {k: fields.get(k, defaults[k]) for k in SHAPE_FIELDS}
    found = [name for name, preset in PRESETS.items()
             if all(preset.get(k, defaults[k]) == shape[k] for k in SHAPE_FIELDS)]
    return found[0] if len(found) == 1 else None


REAL_PRESETS = ("ofa-tiny", "ofa-medium", "ofa-base", "ofa-large", "ofa-huge")
DEFAULT_PRESET = "ofa-nano"
