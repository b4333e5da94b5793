"""State-dict layout and exact parameter counts of every real preset (built on the meta device)."""

import pytest
import torch

from mmprompt.models.ofa import OFAConfig, OFAModel, REAL_PRESETS

# Addendum of the reference: counts of OFA-Sys' own HF-format implementation (buffers excluded).
EXACT_COUNTS = {
    "ofa-tiny": 33_488_336,
    "ofa-medium": 92_892_000,
    "ofa-base": 182_238_536,
    "ofa-large": 472_977_152,
    "ofa-huge": 929_486_848,
}


def _meta_model(name: str) -> OFAModel:
    with torch.device("meta"):
        return OFAModel(OFAConfig.from_preset(name))


@pytest.mark.parametrize("name", REAL_PRESETS)
def test_exact_parameter_count(name):
    assert _meta_model(name).num_parameters() == EXACT_COUNTS[name]


def _ln(prefix):
    return {f"{prefix}.weight", f"{prefix}.bias"}


def _linear(prefix):
    return _ln(prefix)


def _bn(prefix):
    return {f"{prefix}.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def _attention(prefix):
    keys = {f"{prefix}.c_attn"}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        keys |= _linear(f"{prefix}.{proj}")
    return keys


def _resnet(prefix, layers):
    keys = {f"{prefix}.conv1.weight"} | _bn(f"{prefix}.bn1")
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            p = f"{prefix}.layer{stage}.{b}"
            for i in (1, 2, 3):
                keys |= {f"{p}.conv{i}.weight"} | _bn(f"{p}.bn{i}")
            if b == 0:
                keys |= {f"{p}.downsample.0.weight"} | _bn(f"{p}.downsample.1")
    return keys


def _expected_keys(cfg: OFAConfig) -> set[str]:
    """The documented HF-OFA layout (reference §7), written out independently of the model code."""
    keys = {"encoder.embed_tokens.weight", "encoder.type_embedding.weight", "encoder.embed_positions.weight",
            "encoder.embed_image_positions.weight"}
    keys |= _resnet("encoder.embed_images", cfg.resnet_layers)
    for name in ("image_proj", "pos_q_linear", "pos_k_linear"):
        keys |= _linear(f"encoder.{name}")
    for name in ("patch_layernorm_embedding", "layernorm_embedding", "pos_ln", "image_pos_ln", "layer_norm"):
        keys |= _ln(f"encoder.{name}")
    for n in range(cfg.encoder_layers):
        p = f"encoder.layers.{n}"
        keys |= _attention(f"{p}.self_attn") | _linear(f"{p}.fc1") | _linear(f"{p}.fc2")
        for ln in ("self_attn_layer_norm", "self_attn_mid_layer_norm", "ffn_layer_norm", "final_layer_norm"):
            keys |= _ln(f"{p}.{ln}")
        keys |= {f"encoder.token_rel_pos_table_list.{n}.weight", f"encoder.image_rel_pos_table_list.{n}.weight"}
    keys |= {"decoder.embed_tokens.weight", "decoder.embed_positions.weight", "decoder.embed_image_positions.weight",
             "decoder.output_projection.weight"}
    for name in ("layernorm_embedding", "code_layernorm_embedding", "pos_ln", "image_pos_ln", "layer_norm"):
        keys |= _ln(f"decoder.{name}")
    for name in ("self_pos_q_linear", "self_pos_k_linear", "cross_pos_q_linear", "cross_pos_k_linear"):
        keys |= _linear(f"decoder.{name}")
    for n in range(cfg.decoder_layers):
        p = f"decoder.layers.{n}"
        keys |= _attention(f"{p}.self_attn") | _attention(f"{p}.cross_attn")
        keys |= _linear(f"{p}.fc1") | _linear(f"{p}.fc2")
        for ln in ("self_attn_layer_norm", "self_attn_mid_layer_norm", "cross_attn_layer_norm",
                   "cross_attn_mid_layer_norm", "ffn_layer_norm", "final_layer_norm"):
            keys |= _ln(f"{p}.{ln}")
        keys |= {f"decoder.token_rel_pos_table_list.{n}.weight", f"decoder.image_rel_pos_table_list.{n}.weight"}
    return keys


@pytest.mark.parametrize("name", ["ofa-tiny", "ofa-large"])
def test_state_dict_keys_match_documented_layout(name):
    model = _meta_model(name)
    got = set(model.state_dict())
    want = _expected_keys(model.config)
    assert got - want == set(), f"unexpected keys: {sorted(got - want)[:10]}"
    assert want - got == set(), f"missing keys: {sorted(want - got)[:10]}"


def test_documented_shapes_of_ofa_large():
    model = _meta_model("ofa-large")
    sd = model.state_dict()
    d, h = 1024, 16
    expected = {
        "encoder.embed_tokens.weight": (59457, d),
        "encoder.type_embedding.weight": (2, d),
        "encoder.image_proj.weight": (d, 1024),
        "encoder.embed_positions.weight": (1026, d),
        "encoder.embed_image_positions.weight": (1765, d),
        "encoder.token_rel_pos_table_list.0.weight": (511, h),
        "encoder.image_rel_pos_table_list.11.weight": (6892, h),
        "encoder.layers.0.self_attn.c_attn": (h,),
        "encoder.layers.0.ffn_layer_norm.weight": (4096,),
        "encoder.embed_images.layer3.35.conv3.weight": (1024, 256, 1, 1),
        "decoder.output_projection.weight": (59457, d),
        "decoder.layers.11.cross_attn.c_attn": (h,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    buffers = dict(model.named_buffers())
    assert tuple(buffers["encoder.token_rp_bucket"].shape) == (1024, 1024)
    assert tuple(buffers["encoder.image_rp_bucket"].shape) == (1765, 1765)


def test_output_projection_and_embeddings_are_tied():
    model = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50), seed=0)
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight
    assert model.decoder.embed_tokens is model.encoder.embed_tokens
    assert model.encoder.embed_tokens.weight[1].abs().sum() == 0  # padding row


def test_untied_output_projection_adds_parameters():
    tied = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50))
    untied = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50, share_decoder_input_output_embed=False))
    assert untied.num_parameters() - tied.num_parameters() == 50 * tied.config.d_model


def test_attention_sites_have_hf_names():
    model = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50))
    names = {n for n, m in model.named_modules() if n.endswith(("self_attn", "cross_attn"))}
    assert "encoder.layers.0.self_attn" in names and "decoder.layers.3.cross_attn" in names
    assert len(names) == 4 + 2 * 4
    attn = model.get_submodule("decoder.layers.0.self_attn")
    assert attn.num_heads * attn.head_dim == model.config.d_model


def test_drop_path_rates_rise_linearly():
    model = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50, encoder_drop_path_rate=0.3))
    rates = [getattr(layer.drop_path, "rate", 0.0) for layer in model.encoder.layers]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_same_seed_same_weights():
    a = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50), seed=3)
    b = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50), seed=3)
    c = OFAModel(OFAConfig.from_preset("ofa-nano-small", vocab_size=50), seed=4)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["encoder.pos_q_linear.weight"], pc["encoder.pos_q_linear.weight"])
