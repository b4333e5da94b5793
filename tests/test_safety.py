"""Issue #15, in-process cases: strict loading, config types and malformed JSON, prompt-length bound,
a truthful NaN guard, truncated TSV rows, tuning output directories, OFA-Sys configs without an image size.
Each case checks what survives, not only that an error is raised. The subprocess cases (kills, CLIs) are in
``tests/test_faults.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmprompt import load_model, tune
from mmprompt.core.checks import check_apart, check_choice, check_int, check_number
from mmprompt.data import TaskDataset
from mmprompt.data.tsv import TSVFormatError
from mmprompt.models.ofa import OFAConfig, from_pretrained
from mmprompt.training import NonFiniteLossError, TrainConfig, train
from mmprompt.tuning import PrefixConfig, ShallowPromptConfig, apply_method


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def model_copy(random_ofa_dir, tmp_path) -> Path:
    return Path(shutil.copytree(random_ofa_dir, tmp_path / "model"))


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- checks (item 10)
def test_checks_name_the_parameter_the_value_and_what_is_allowed(tmp_path):
    assert check_int("steps", 3, lo=1) == 3 and check_number("lr", 0.5, lo=0) == 0.5
    with pytest.raises(ValueError, match=r"steps=True: allowed an integer >= 1"):
        check_int("steps", True, lo=1)
    with pytest.raises(ValueError, match=r"dropout='0.1': allowed a finite number in \[0, 1\]"):
        check_number("dropout", "0.1", lo=0, hi=1)
    with pytest.raises(ValueError, match=r"mode='up': allowed \['max', 'min'\]"):
        check_choice("mode", "up", ("max", "min"))
    with pytest.raises(ValueError, match="is inside"):
        check_apart("out", tmp_path / "m" / "x", "model", tmp_path / "m")
    with pytest.raises(ValueError, match="contains"):
        check_apart("out", tmp_path, "model", tmp_path / "m")
    assert check_apart("out", tmp_path / "a", "model", tmp_path / "ab") == (tmp_path / "a").resolve()


def test_config_field_of_the_wrong_type_and_malformed_json_are_named(model_copy):
    with pytest.raises(ValueError, match=r"dropout='0.1': allowed a finite number"):
        OFAConfig.from_dict({"dropout": "0.1"})
    with pytest.raises(ValueError, match=r"d_model='128': allowed an integer"):
        OFAConfig.from_dict({"d_model": "128"})
    with pytest.raises(ValueError, match=r"normformer='yes': allowed a bool"):
        OFAConfig.from_dict({"normformer": "yes"})
    good = (model_copy / "config.json").read_text()
    (model_copy / "config.json").write_text(good[:-20])
    with pytest.raises(ValueError, match=rf"config file '{model_copy / 'config.json'}' is not valid JSON: .* line \d+"):
        load_model(model_copy)
    data = json.loads(good)
    (model_copy / "config.json").write_text(json.dumps({**data, "dropout": "0.1"}))
    with pytest.raises(ValueError, match="dropout='0.1'"):
        load_model(model_copy)
    assert (model_copy / "model.safetensors").stat().st_size > 0


# ----------------------------------------------------------------------------------- strict loading (item 5)
def test_loading_refuses_keys_that_do_not_match(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    six = config["encoder_layers"]
    (model_copy / "config.json").write_text(json.dumps({**config, "encoder_layers": six + 2}))
    with pytest.raises(ValueError, match=rf"46 missing keys \(encoder\.token_rel_pos_table_list\.{six}\.weight, .*\(43 more\)\).*strict=False"):
        load_model(model_copy)
    loose = load_model(model_copy, strict=False)  # an explicit opt-out still loads
    assert len(loose.model.encoder.layers) == six + 2
    (model_copy / "config.json").write_text(json.dumps(config))
    weights = load_file(model_copy / "model.safetensors")
    total = len(weights)
    save_file({f"ofa.{k}": v for k, v in weights.items()}, model_copy / "model.safetensors")
    with pytest.raises(ValueError, match=rf"\d+ missing keys .* and {total} unexpected keys \(ofa\."):
        from_pretrained(model_copy)


# ----------------------------------------------------------------------------------- item 12
def test_ofa_sys_config_without_image_size_takes_the_matching_presets(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    for key in ("patch_image_size", "name", "resnet_layers", "resnet_width"):
        config.pop(key)
    sys_config = {**config, "resnet_layers": [1, 1, 1], "resnet_width": 8}  # the nano ResNet, named explicitly
    (model_copy / "config.json").write_text(json.dumps(sys_config))
    backbone = load_model(model_copy)
    assert backbone.patch_image_size == 96 and backbone.model.config.name == "ofa-nano-small"
    real = OFAConfig.from_dict({"d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
                                "encoder_attention_heads": 12, "decoder_attention_heads": 12,
                                "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072})
    assert (real.patch_image_size, real.name) == (384, "ofa-base")
    assert OFAConfig.from_dict({"d_model": 96, "encoder_attention_heads": 4, "decoder_attention_heads": 4}
                               ).patch_image_size == 480  # no preset matches: the default, with a warning
    assert load_model(model_copy, patch_image_size=64, dropout=0.0).patch_image_size == 64
    assert load_model(model_copy, pretrained=False, patch_image_size=64).patch_image_size == 64
    with pytest.raises(ValueError, match=r"overrides \['patch_size'\]: not OFAConfig fields"):
        load_model(model_copy, patch_size=64)


# ----------------------------------------------------------------------------------- prompt length (item 10)
@pytest.mark.parametrize("config", [PrefixConfig(length=100_000), ShallowPromptConfig(length=100_000)])
def test_a_prompt_longer_than_the_backbone_holds_is_refused_before_allocation(random_ofa_dir, config):
    backbone = load_model(random_ofa_dir)
    limit = backbone.model.config.max_position_embeddings
    before = sum(p.numel() for p in backbone.model.parameters())
    with pytest.raises(ValueError, match=rf"length=100000: longer than the {limit} positions .* allowed 1..{limit}"):
        apply_method(backbone.model, config)
    assert sum(p.numel() for p in backbone.model.parameters()) == before
    assert all(p.requires_grad for p in backbone.model.parameters())  # nothing was frozen either


def test_tune_refuses_a_huge_prompt_length_from_the_recipe(random_ofa_dir, tiny_synthetic):
    backbone = load_model(random_ofa_dir)
    with pytest.raises(ValueError, match="length=100000"):
        tune(backbone, "snli_ve", "prefix", data_dir=tiny_synthetic, recipe={"prompt_length": 100_000},
             progress=False)


# ----------------------------------------------------------------------------------- NaN guard (item 10)
class _Exploding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        return self.w * (float("nan") if int(batch[0]) >= 5 else 1.0)


def _nan_run(out_dir):
    cfg = TrainConfig(lr=0.1, max_steps=8, batch_size=1, shuffle=False, save_every=2, out_dir=out_dir,
                      progress=False, device="cpu")
    return train(_Exploding(), list(range(8)), cfg, loss_fn=lambda m, b: m(b))


def test_nan_guard_says_what_is_on_disk(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"at step 6; training stopped, no checkpoint was saved "
                                                 r"\(out_dir=None\)"):
        _nan_run(None)
    with pytest.raises(NonFiniteLossError, match=rf"checkpoint {tmp_path / 'run' / 'last'} \(step 4\) is kept"):
        _nan_run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "last" / "meta.json").read_text())["step"] == 4


# ----------------------------------------------------------------------------------- truncated rows (item 6)
def _truncated_copy(src: Path, dst: Path, task: str = "snli_ve") -> tuple[Path, int]:
    shutil.copytree(src, dst)
    path = dst / f"{task}_train.tsv"
    lines = path.read_text().splitlines(keepends=True)
    cols = lines[-1].rstrip("\n").split("\t")
    image = 2  # snli_ve: uniq_id, image_id, image, ...
    cols[image] = cols[image][: len(cols[image]) // 8 * 4]  # cut mid-image, still valid base64
    lines[-1] = "\t".join(cols) + "\n"
    path.write_text("".join(lines))
    return path, len(lines)


def test_a_truncated_row_is_caught_when_the_file_is_indexed(tiny_synthetic, nano_tokenizer, tmp_path):
    path, line = _truncated_copy(tiny_synthetic, tmp_path / "data")
    with pytest.raises(TSVFormatError, match=rf"{path}:{line}: truncated JPEG image"):
        TaskDataset(path, "snli_ve", nano_tokenizer, 96)
    ds = TaskDataset(path, "snli_ve", nano_tokenizer, 96, on_error="skip")
    assert len(ds) == line - 1 and ds.skipped == 1 and f"{path}:{line}" in ds.problems[0]
    assert all(ds[i]["patch_image"].shape == (3, 96, 96) for i in range(len(ds)))  # every kept row loads


# ----------------------------------------------------------------------------------- tune out_dir (items 3, 4)
def _tune(backbone, data, out_dir, **kw):
    return tune(backbone, "snli_ve", PrefixConfig(length=2), data_dir=data, steps=4, batch_size=4, eval_examples=4,
                test_splits=False, out_dir=out_dir, progress=False, recipe={"save_every": 2}, **kw)


def test_tune_never_replaces_a_run_and_resumes_it(random_ofa_dir, tiny_synthetic, tmp_path):
    backbone = load_model(random_ofa_dir)
    first = _tune(backbone, tiny_synthetic, tmp_path / "run")
    kept = _files(tmp_path / "run")
    with pytest.raises(ValueError, match=r"already holds a tuning run \(last/\); allowed: resume=True"):
        _tune(backbone, tiny_synthetic, tmp_path / "run")
    assert _files(tmp_path / "run") == kept
    again = _tune(backbone, tiny_synthetic, tmp_path / "run", resume=True)  # a finished run: nothing retrained
    assert again.metrics == first.metrics and again.history == first.history
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        _tune(backbone, tiny_synthetic, None, resume=True)


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_tune_refuses_an_out_dir_overlapping_the_model(model_copy, tiny_synthetic, where):
    backbone = load_model(model_copy)
    kept = _files(model_copy)
    out = {"same": model_copy, "inside": model_copy / "runs" / "a", "parent": model_copy.parent}[where]
    with pytest.raises(ValueError, match=r"out_dir=.* (is|is inside|contains) the model directory"):
        _tune(backbone, tiny_synthetic, out)
    assert _files(model_copy) == kept
    load_model(model_copy)


def test_malformed_json_files_are_named(tmp_path):
    from mmprompt.nano.model_card import measured_at
    from mmprompt.tuning.export import CONFIG_FILE, WEIGHTS_FILE, read_prompt_meta

    (tmp_path / CONFIG_FILE).write_text('{"format": ')
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"prompt config '{tmp_path / CONFIG_FILE}' is not valid JSON"):
        read_prompt_meta(tmp_path)
    (tmp_path / "tuning.json").write_text('{"profile": "cpu", "rows": [')
    with pytest.raises(ValueError, match=rf"study file '{tmp_path / 'tuning.json'}' is not valid JSON"):
        measured_at(tmp_path, {"profile": "ci"})
