"""Pretraining: a few curriculum steps on tiny data lower the loss, write a loadable checkpoint, and resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mmprompt import load_model
from mmprompt.nano.pretrain import PretrainConfig, Stage, pretrain


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path, data, name, **kw):
    return PretrainConfig(preset="ofa-nano-small", out=str(tmp_path / name / "out"),
                          work_dir=str(tmp_path / name / "work"), profile="ci", data_dir=str(data), steps=12,
                          batch_size=4, lr=2e-3, warmup_steps=0, eval_every=4, eval_examples=8,
                          resnet_warmup_steps=2, stages=(Stage(1, 0.25), Stage(4, 0.75)), **kw)


@pytest.fixture(scope="module")
def ci_data():
    """The ci synthetic data: the tiny fixture has no object-listing rows for the ResNet warm-up."""
    from mmprompt.data import ensure_synthetic

    return ensure_synthetic("ci")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ci_data):
    tmp = tmp_path_factory.mktemp("pretrain")
    return tmp, pretrain(_config(tmp, ci_data, "a"))


def test_pretraining_lowers_the_loss_and_writes_a_loadable_checkpoint(first_run):
    _, out = first_run
    record = json.loads((out / "pretrain.json").read_text())
    losses = [r["val_loss"] for r in record["history"] if "val_loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert record["resnet_warmup"]["steps"] == 2
    assert (out / "pretrain_loss.png").stat().st_size > 0
    backbone = load_model(out)
    assert backbone.model.config.encoder_layers == 4 and len(backbone.tokenizer) > 100


def test_interrupted_pretraining_resumes_to_the_same_weights(first_run, ci_data):
    tmp, out_a = first_run
    cfg = _config(tmp, ci_data, "b")
    pretrain(cfg)
    shutil.rmtree(tmp / "b" / "out")
    shutil.rmtree(tmp / "b" / "work" / "1")  # killed during the last stage, before its first checkpoint
    out_b = pretrain(_config(tmp, ci_data, "b", resume=True))
    a, b = load_file(out_a / "model.safetensors"), load_file(out_b / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(preset="ofa-giant"), "preset='ofa-giant'"), (dict(profile="gpu"), "profile='gpu'"),
     (dict(steps=0), "steps=0"), (dict(stages=(Stage(1, 0.5),)), "stages="),
     (dict(resnet_warmup_steps=-1), "resnet_warmup_steps=-1")],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**kwargs)


def test_model_card_reports_pretraining_zero_shot_and_transfer(first_run, tiny_synthetic):
    from mmprompt.nano.model_card import METHOD_RUNS, TRANSFER_RUNS, tuning_study, write_card, zero_shot

    _, out = first_run
    zero = zero_shot(out, "ci", data_dir=tiny_synthetic)
    assert set(zero) == {"refcoco", "snli_ve", "caption", "vqa"}
    transfer = tuning_study(out, "ci", steps=1, tasks=("snli_ve",), data_dir=tiny_synthetic, zero=zero,
                            runs=TRANSFER_RUNS + METHOD_RUNS)
    runs = [r["run"] for r in transfer["rows"]]
    assert runs == ["zero-shot", "prefix", "finetune", "finetune (random init)", "bitfit", "adapter", "lora"]
    assert transfer["rows"][0]["score"] == zero["snli_ve"]["score"]
    seen = {"listing": {"size": 1.0, "colour": 0.125, "shape": 0.25, "box": 0.5, "n": 8},
            "grounding_by_objects": {"1": {"acc": 1.0, "n": 3}, "2": {"acc": 0.25, "n": 4}}}
    card = write_card(out, zero, transfer, seen).read_text()
    assert "| 100.0 | 12.5 | 25.0 | 50.0 |" in card and "| Acc@0.5 (rows) | 100.0 (3) | 25.0 (4) |" in card
    assert "## Pretraining" in card and "stage 1: ≤ 4 objects" in card and "pretrain_loss.png" in card
    assert "ResNet warm-up first" in card and "--resnet-warmup-steps 2" in card
    assert f"{100 * zero['vqa']['score']:.1f}" in card and "finetune (random init)" in card
    assert "## Tuning methods" in card and "| snli_ve (accuracy) | lora |" in card


def test_tuning_study_resumes_from_its_file(first_run, tiny_synthetic, tmp_path, monkeypatch):
    import mmprompt.nano.model_card as mc

    _, out = first_run
    path = tmp_path / "tuning.json"
    first = mc.tuning_study(out, "ci", steps=1, tasks=("vqa",), data_dir=tiny_synthetic, path=path)
    assert [r["run"] for r in first["rows"]] == ["zero-shot", "prefix", "finetune", "finetune (random init)"]
    other = mc.tuning_study(out, "ci", steps=1, tasks=("snli_ve",), data_dir=tiny_synthetic, path=path,
                            runs=(("zero-shot", True),))  # e.g. a second process on another task: rows merge
    assert [(r["task"], r["run"]) for r in other["rows"]][-2:] == [("vqa", "finetune (random init)"),
                                                                  ("snli_ve", "zero-shot")]
    first["rows"] = other["rows"]

    def no_tuning(*args, **kwargs):
        raise AssertionError("a finished run was measured again")

    monkeypatch.setattr(mc, "tune", no_tuning)
    again = mc.tuning_study(out, "ci", steps=1, tasks=("vqa",), data_dir=tiny_synthetic, path=path)
    assert again == first == json.loads(path.read_text())
    changed = tmp_path / "regenerated"
    shutil.copytree(tiny_synthetic, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["files"]["vqa_val.tsv"]["sha256"] = "0" * 64  # as if the vqa splits had been generated anew
    (changed / "manifest.json").write_text(json.dumps(manifest))
    mc.tuning_study(out, "ci", steps=1, tasks=("snli_ve",), data_dir=changed, path=path,
                    runs=(("zero-shot", True),))  # snli_ve's data did not change: its row is reused
    with pytest.raises(AssertionError, match="measured again"):  # vqa's did: its rows are measured again
        mc.tuning_study(out, "ci", steps=1, tasks=("vqa",), data_dir=changed, path=path)
    kept = path.read_bytes()
    with pytest.raises(ValueError, match="measured at {'steps': 1}"):  # other settings: refused, file kept
        mc.tuning_study(out, "ci", steps=2, tasks=("vqa",), data_dir=tiny_synthetic, path=path)
    assert path.read_bytes() == kept
    with pytest.raises(ValueError, match="tasks=\\['coco'\\]"):
        mc.tuning_study(out, "ci", tasks=("coco",), path=path)


def test_data_id_follows_the_task_files(tmp_path):
    from mmprompt.nano.model_card import data_id

    for name in ("vqa_train.tsv", "vqa_val.tsv", "caption_train.tsv", "caption_val.tsv"):
        (tmp_path / name).write_text(name)
    before = data_id("vqa", "ci", tmp_path)
    assert before == data_id("vqa", "ci", tmp_path) and before != data_id("caption", "ci", tmp_path)
    (tmp_path / "caption_val.tsv").write_text("other")
    assert data_id("vqa", "ci", tmp_path) == before
    (tmp_path / "vqa_val.tsv").write_text("other")
    assert data_id("vqa", "ci", tmp_path) != before
