"""Saving/loading prompts, backbone fingerprints, and the trainable-parameter report."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BartModel

from mmprompt.tuning import (
    PrefixConfig,
    apply_prefix,
    count_parameters,
    format_parameter_table,
    load_prompt,
    remove_method,
    save_prompt,
)
from mmprompt.tuning.export import CONFIG_FILE, WEIGHTS_FILE, fingerprint
from mmprompt.tuning.testing import tiny_bart


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_prompt(model, **kw):
    config = PrefixConfig(length=3, sites=("encoder_self", "decoder_self", "decoder_cross"), dropout=0.0, **kw)
    bank = apply_prefix(model, config)
    with torch.no_grad():  # stand-in for training: move every prompt parameter
        for param in bank.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    return bank


def _logits(model):
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        return model(input_ids=x, decoder_input_ids=torch.tensor([[2, 11, 12]])).logits


@pytest.mark.parametrize("hidden", [None, 8])
def test_round_trip_restores_outputs_and_stores_only_prompt(tmp_path, hidden):
    model = tiny_bart()
    bank = _trained_prompt(model, reparam=hidden is not None, reparam_hidden=hidden, depth=1, depth_from="top")
    expected = _logits(model)
    save_prompt(model, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert set(tensors) == set(bank.state_dict())
    assert sum(t.numel() for t in tensors.values()) == count_parameters(model)["trainable"]
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["layers"] == {"encoder_self": [1], "decoder_self": [1], "decoder_cross": [1]}

    fresh = tiny_bart()  # same seed: same backbone
    loaded = load_prompt(fresh, tmp_path)
    assert loaded.config == bank.config
    torch.testing.assert_close(_logits(fresh), expected, atol=0, rtol=0)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_folded_save_is_a_flat_table_with_the_same_outputs(tmp_path):
    model = tiny_bart()
    _trained_prompt(model, reparam=True, reparam_hidden=8)
    expected = _logits(model)
    save_prompt(model, tmp_path, fold=True)
    assert model.mmprompt_prefix.config.reparam_hidden == 8  # the live module is unchanged
    tensors = load_file(str(tmp_path / WEIGHTS_FILE))
    assert all(k.endswith("embedding.weight") for k in tensors) and len(tensors) == 3
    fresh = tiny_bart()
    assert load_prompt(fresh, tmp_path).config.reparam is False
    torch.testing.assert_close(_logits(fresh), expected, atol=1e-6, rtol=0)


def test_loading_onto_another_backbone_fails_and_says_what_differs(tmp_path):
    model = tiny_bart()
    _trained_prompt(model)
    save_prompt(model, tmp_path)

    with pytest.raises(ValueError, match="encoder layers: saved 2, model 3"):
        load_prompt(tiny_bart(layers=3), tmp_path)
    with pytest.raises(ValueError, match="architecture: saved BartForConditionalGeneration, model BartModel"):
        torch.manual_seed(0)
        load_prompt(BartModel(tiny_bart().config), tmp_path)
    other_weights = tiny_bart(seed=1)
    with pytest.raises(ValueError, match="different backbone weights"):
        load_prompt(other_weights, tmp_path)
    assert not hasattr(other_weights, "mmprompt_prefix")  # nothing applied on failure
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_prompt(tiny_bart(), tmp_path / "missing")


def test_fingerprint_ignores_precision_cast_but_not_weights():
    model = tiny_bart()
    fp = fingerprint(model)
    assert fp["stacks"]["encoder"] == {"layers": 2, "heads": 2, "head_dim": 8, "d_model": 16}
    assert fingerprint(tiny_bart().to(torch.bfloat16))["weights_sha256"] == fp["weights_sha256"]
    with torch.no_grad():
        model.get_input_embeddings().weight[7, 3] += 0.5
    assert fingerprint(model)["weights_sha256"] != fp["weights_sha256"]


def test_overwriting_a_saved_prompt_and_loading_onto_a_model_with_a_method(tmp_path):
    model = tiny_bart()
    _trained_prompt(model)
    save_prompt(model, tmp_path)
    save_prompt(model, tmp_path)  # overwrite in place
    with pytest.raises(ValueError, match="already has method"):
        load_prompt(model, tmp_path)
    remove_method(model)
    load_prompt(model, tmp_path)


def test_parameter_report_groups_and_table():
    model = tiny_bart()
    total = sum(p.numel() for p in model.parameters())
    apply_prefix(model, PrefixConfig(length=4))
    counts = count_parameters(model)
    per_site = 4 * 2 * 2 * 16
    assert counts["groups"] == {
        "backbone": {"trainable": 0, "total": total},
        "prefix:decoder_self": {"trainable": per_site, "total": per_site},
        "prefix:encoder_self": {"trainable": per_site, "total": per_site},
    }
    assert counts["fraction_of_backbone"] == pytest.approx(2 * per_site / total)
    table = format_parameter_table(model)
    assert "prefix:encoder_self" in table and f"{2 * per_site:,}" in table
