"""OFAConfig: presets, HF config.json field names, validation."""

import json

import pytest

from mmprompt.models.ofa import OFAConfig, PRESETS, REAL_PRESETS

# Values of OFA-Sys' published HF configs (tiny/medium/large seen; base/huge from the fairseq archs).
PUBLISHED = {
    "ofa-tiny": (256, 4, 4, 4, 1024, (3, 4, 6)),
    "ofa-medium": (512, 4, 4, 8, 2048, (3, 4, 23)),
    "ofa-base": (768, 6, 6, 12, 3072, (3, 4, 23)),
    "ofa-large": (1024, 12, 12, 16, 4096, (3, 8, 36)),
    "ofa-huge": (1280, 24, 12, 16, 5120, (3, 8, 36)),
}


@pytest.mark.parametrize("name", REAL_PRESETS)
def test_real_presets_match_published_sizes(name):
    cfg = OFAConfig.from_preset(name)
    d, enc, dec, heads, ffn, resnet = PUBLISHED[name]
    got = (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads,
           cfg.decoder_attention_heads, cfg.encoder_ffn_dim, cfg.decoder_ffn_dim)
    assert got == (d, enc, dec, heads, heads, ffn, ffn)
    assert cfg.resnet_layers == resnet and cfg.resnet_width == 64 and cfg.resnet_out_channels == 1024
    got = (cfg.vocab_size, cfg.token_bucket_size, cfg.image_bucket_size, cfg.attn_scale_factor)
    assert got == (59457, 256, 42, 2.0)
    assert cfg.max_position_embeddings == 1024 and cfg.normformer and cfg.encoder_normalize_before
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (1, 0, 2)
    assert cfg.max_image_size == 42 * 16


def test_nano_presets_are_small_and_deep_enough():
    nano, small = OFAConfig.from_preset("ofa-nano"), OFAConfig.from_preset("ofa-nano-small")
    assert nano.encoder_layers == nano.decoder_layers == 6
    assert small.d_model < nano.d_model
    assert nano.patch_image_size % 16 == 0 and nano.patch_image_size <= nano.max_image_size
    assert OFAConfig.from_preset("ofa-nano", vocab_size=1234).vocab_size == 1234


def test_unknown_preset_lists_allowed():
    with pytest.raises(ValueError) as err:
        OFAConfig.from_preset("ofa-gigantic")
    for name in PRESETS:
        assert name in str(err.value)


def test_unknown_override_field_rejected():
    with pytest.raises(ValueError, match="d_modle"):
        OFAConfig.from_preset("ofa-nano", d_modle=3)


def test_reads_hf_config_json(tmp_path):
    hf = {
        "activation_function": "gelu", "architectures": ["OFAModel"], "attn_scale_factor": 2.0,
        "d_model": 256, "decoder_attention_heads": 4, "decoder_ffn_dim": 1024, "decoder_layers": 4,
        "encoder_attention_heads": 4, "encoder_ffn_dim": 1024, "encoder_layers": 4, "model_type": "ofa",
        "resnet_type": "resnet50", "resnet_model_path": None, "vocab_size": 59457, "torch_dtype": "float32",
        "transformers_version": "4.18.0.dev0", "use_cache": False, "image_bucket_size": 42,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(hf))
    cfg = OFAConfig.from_json(path)
    assert cfg.resnet_layers == (3, 4, 6) and cfg.d_model == 256
    assert cfg.extra["transformers_version"] == "4.18.0.dev0"
    again = OFAConfig.from_dict(json.loads(cfg.to_json_string()))
    assert again.to_dict() == cfg.to_dict()
    assert cfg.to_dict()["model_type"] == "ofa"


def test_round_trip_preserves_nano_extensions():
    cfg = OFAConfig.from_preset("ofa-nano", vocab_size=777)
    back = OFAConfig.from_dict(cfg.to_dict())
    assert back == cfg


@pytest.mark.parametrize("field,value,match", [
    ("encoder_attention_heads", 5, "divisible"),
    ("resnet_type", "resnet9000", "resnet_type"),
    ("dropout", 1.5, "dropout"),
    ("encoder_layerdrop", 0.1, "encoder_layerdrop"),
    ("vocab_size", 0, "vocab_size"),
    ("activation_function", "swish9", "activation_function"),
])
def test_bad_values_rejected(field, value, match):
    with pytest.raises(ValueError, match=match):
        OFAConfig(**{field: value})


def test_wrong_model_type_rejected():
    with pytest.raises(ValueError, match="model_type"):
        OFAConfig.from_dict({"model_type": "bart"})


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        OFAConfig.from_json(tmp_path / "config.json")
