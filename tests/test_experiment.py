"""The experiment layer: load_model, tune (every method family), results tables, bad input."""

import pytest
import torch

from mmprompt import load_model, results_table, tune
from mmprompt.tuning import PrefixConfig


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(random_ofa_dir):
    return random_ofa_dir


@pytest.fixture(scope="module")
def backbone(model_dir):
    return load_model(model_dir)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_load_model_reads_a_directory_and_builds_random_twins(model_dir):
    pretrained, scratch = load_model(model_dir), load_model(model_dir, pretrained=False, seed=1)
    assert pretrained.patch_image_size == 96
    assert type(scratch.model) is type(pretrained.model)
    w1 = pretrained.model.encoder.embed_tokens.weight
    w2 = scratch.model.encoder.embed_tokens.weight
    assert w1.shape == w2.shape and not torch.equal(w1, w2)


def test_load_model_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone='no-such-model'"):
        load_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")


@pytest.mark.parametrize("task", ["refcoco", "snli_ve", "vqa", "caption"])
def test_prefix_tune_every_task_leaves_the_backbone_untouched(backbone, tiny_synthetic, task):
    before = _state(backbone.model)
    r = tune(backbone, task, PrefixConfig(length=4), data_dir=tiny_synthetic, steps=2, batch_size=4,
             eval_examples=4, progress=False)
    cfg = backbone.model.config
    assert r.trainable == 4 * (cfg.encoder_layers + cfg.decoder_layers) * 2 * cfg.d_model
    assert r.steps == 2 and len(r.predictions) == 4
    val = {"refcoco": "val", "snli_ve": "dev", "vqa": "val", "caption": "val"}[task]
    assert val in r.metrics and 0.0 <= r.score <= (10.0 if task == "caption" else 1.0)
    after = _state(backbone.model)
    assert all(torch.equal(before[k], after[k]) for k in before), "tune must work on a copy"


def test_methods_differ_in_trainable_share_and_table_has_one_row_each(backbone, tiny_synthetic):
    kw = dict(data_dir=tiny_synthetic, steps=1, batch_size=4, eval_examples=4, test_splits=False, progress=False)
    results = [tune(backbone, "snli_ve", m, **kw) for m in ("zero-shot", "bitfit", "prefix", "finetune")]
    shares = [r.trainable for r in results]
    assert shares[0] == 0 and shares[1] < shares[2] < shares[3] == results[3].total
    table = results_table(results)
    assert list(table["method"]) == ["zero-shot", "bitfit", "prefix", "finetune"]
    assert "dev_accuracy" in table.columns


def test_tune_keeps_the_model_when_asked_and_it_differs_from_the_backbone(backbone, tiny_synthetic):
    r = tune(backbone, "refcoco", "finetune", data_dir=tiny_synthetic, steps=2, batch_size=4, eval_examples=4,
             test_splits=False, keep_model=True, lr=1e-2, progress=False)
    w = r.model.encoder.embed_tokens.weight
    assert not torch.equal(w, backbone.model.encoder.embed_tokens.weight)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(task="pos-tagging"), "task='pos-tagging'"),
        (dict(method="dora"), "method='dora'"),
        (dict(profile="tpu"), "profile='tpu'"),
        (dict(lr=-1.0), "lr=-1.0"),
    ],
)
def test_tune_rejects_bad_input_before_any_work(backbone, tiny_synthetic, kwargs, match):
    args = dict(task="refcoco", method="prefix", data_dir=tiny_synthetic, progress=False) | kwargs
    with pytest.raises(ValueError, match=match):
        tune(backbone, args.pop("task"), args.pop("method"), **args)


def test_gpu_profile_needs_real_data(backbone):
    with pytest.raises(ValueError, match="needs data_dir"):
        tune(backbone, "refcoco", "prefix", profile="gpu", progress=False)
