"""Loading OFA-Sys HF-style directories and saving in the same layout."""

import json
import logging

import pytest
import torch

from mmprompt.models.ofa import OFAModel, from_pretrained, save_pretrained
from mmprompt.models.ofa.testing import make_batch, tiny_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> OFAModel:
    return tiny_model(vocab_size=64, seed=0, preset="ofa-nano-small")


def _outputs(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _bin_dir(tmp_path, model, state):
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path


def test_save_then_load_round_trip(model, tmp_path):
    batch = make_batch(model.config, (6, 4), image_size=32)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded, report = from_pretrained(tmp_path, output_loading_info=True)
    assert report.clean and report.missing_keys == [] and report.unexpected_keys == []
    assert torch.equal(_outputs(model, batch), _outputs(loaded, batch))
    assert loaded.decoder.output_projection.weight is loaded.encoder.embed_tokens.weight
    assert not loaded.training


def test_load_bin_with_renamed_and_missing_keys_reports_them(model, tmp_path, caplog):
    state = model.state_dict()
    state["encoder.layers.0.attn_ln.weight"] = state.pop("encoder.layers.0.self_attn_mid_layer_norm.weight")
    del state["decoder.cross_pos_k_linear.bias"]
    _bin_dir(tmp_path, model, state)
    with caplog.at_level(logging.WARNING):
        loaded, report = from_pretrained(tmp_path, output_loading_info=True, strict=False)
    assert report.missing_keys == ["encoder.layers.0.self_attn_mid_layer_norm.weight",
                                   "decoder.cross_pos_k_linear.bias"]
    assert report.unexpected_keys == ["encoder.layers.0.attn_ln.weight"]
    assert "attn_ln" in caplog.text and "missing" in caplog.text
    # everything else was loaded
    assert torch.equal(loaded.encoder.layers[1].fc1.weight, model.encoder.layers[1].fc1.weight)
    with pytest.raises(ValueError, match=r"2 missing keys \(encoder\.layers\.0\.self_attn_mid_layer_norm\.weight, "
                       r"decoder\.cross_pos_k_linear\.bias\) and 1 unexpected keys \(encoder\.layers\.0\.attn_ln"):
        from_pretrained(tmp_path)  # strict by default


def test_shape_mismatch_names_key_and_shapes(model, tmp_path):
    state = model.state_dict()
    state["encoder.image_proj.weight"] = torch.zeros(64, 1024)
    _bin_dir(tmp_path, model, state)
    with pytest.raises(ValueError, match=r"encoder\.image_proj\.weight: checkpoint \(64, 1024\) vs model \(64, 128\)"):
        from_pretrained(tmp_path)


def test_hf_prefix_tied_copies_and_bucket_buffers(model, tmp_path):
    state = {f"model.{k}": v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    buffers = dict(model.named_buffers())
    state["model.encoder.token_rp_bucket"] = buffers["encoder.token_rp_bucket"].clone()
    bad = buffers["decoder.image_rp_bucket"].clone()
    bad[1, 2] += 1
    state["model.decoder.image_rp_bucket"] = bad
    state["model.decoder.image_position_idx"] = torch.arange(5)
    _bin_dir(tmp_path, model, state)
    loaded, report = from_pretrained(tmp_path, output_loading_info=True)
    assert report.missing_keys == []  # the embedding came through its tied output projection
    assert report.unexpected_keys == []
    assert sorted(report.rebuilt_buffers) == ["decoder.image_rp_bucket", "encoder.token_rp_bucket"]
    assert report.differing_buffers == ["decoder.image_rp_bucket"]
    assert report.ignored_keys == ["decoder.image_position_idx"]
    assert torch.equal(loaded.encoder.embed_tokens.weight, model.encoder.embed_tokens.weight)


def test_sharded_bin(model, tmp_path):
    state = model.state_dict()
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"a.bin": keys[:half], "b.bin": keys[half:]}
    weight_map = {}
    for name, ks in shards.items():
        torch.save({k: state[k] for k in ks}, tmp_path / name)
        weight_map.update({k: name for k in ks})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    batch = make_batch(model.config, (5, 5), image_size=32)
    assert torch.equal(_outputs(from_pretrained(tmp_path), batch), _outputs(model, batch))


def test_config_overrides(model, tmp_path):
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, dropout=0.0)
    assert loaded.config.dropout == 0.0


def test_directory_without_config(tmp_path):
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path)


def test_missing_directory_and_missing_weights(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(model.config.to_json_string())
    with pytest.raises(FileNotFoundError, match="no weights"):
        from_pretrained(tmp_path)
