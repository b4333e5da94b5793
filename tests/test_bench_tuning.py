"""``python -m mmprompt.bench tuning`` at a tiny size: every method, finite ratios, exact trainable counts."""

import json
import math

import pytest
import torch

from mmprompt.bench import available, tuning
from mmprompt.bench.__main__ import main as bench_main
from mmprompt.models.ofa import OFAModel
from mmprompt.tuning import apply_method, count_parameters

TINY = ["--preset", "ofa-nano-small", "--batch", "1", "--src-len", "4", "--tgt-len", "2", "--image-size", "32",
        "--length", "2", "--decode-len", "2", "--warmup", "0", "--reps", "2", "--memory-steps", "1",
        "--threads", "1", "--in-process"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tuning.json"
    assert bench_main(["tuning", *TINY, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_table_has_every_method_and_finite_ratios(report, capsys):
    assert "tuning" in available() and "gpu" in available() and "common" not in available()
    rows = report["results"]
    assert list(rows) == [*tuning.METHODS, "none"]
    for m in tuning.METHODS:
        r = rows[m]
        for key in ("step_seconds", "step_time_ratio", "step_memory_mb", "step_memory_ratio"):
            assert math.isfinite(r[key]) and r[key] >= 0, (m, key, r[key])
        assert len(r["step_seconds_all"]) == 2 and r["step_seconds"] > 0
        if m != "finetune":
            assert math.isfinite(r["infer_ratio"]) and r["infer_ratio"] > 0
    assert rows["finetune"]["step_time_ratio"] == 1.0 and "infer_seconds" not in rows["finetune"]
    assert rows["none"]["infer_ratio"] == 1.0 and rows["none"]["trainable"] == 0
    for key in ("prefix_time_ratio", "prefix_memory_ratio", "prefix_inference_ratio"):
        assert math.isfinite(report[key])
    assert report["prefix_time_ratio"] == rows["prefix"]["step_time_ratio"]


def test_trainable_counts_match_count_parameters(report):
    shape = tuning.Shape(**report["shape"])
    for m in tuning.METHODS:
        model = OFAModel.from_preset("ofa-nano-small", seed=0)
        apply_method(model, tuning.method_config(m, shape.length, shape.seed))
        assert report["results"][m]["trainable"] == count_parameters(model)["trainable"], m
    cfg = shape.config()
    assert report["results"]["prefix"]["trainable"] == 2 * (cfg.encoder_layers + cfg.decoder_layers) * 2 * cfg.d_model


def test_frozen_backbone_does_no_weight_or_resnet_backward(report):
    rows = report["results"]
    assert rows["finetune"]["resnet_in_graph"] is True
    for m in ("prefix", "bitfit", "adapter", "lora"):
        assert rows[m]["resnet_in_graph"] is False, m
    for m in tuning.METHODS:
        assert rows[m]["frozen_with_grad"] == [], m


def test_the_check_catches_a_resnet_left_trainable():
    shape = tuning.Shape("ofa-nano-small", batch=1, src_len=4, tgt_len=2, image_size=32, length=2, decode_len=2)
    contender = tuning.Contender("prefix", shape)
    contender.model.encoder.embed_images.conv1.weight.requires_grad_(True)
    contender.params.append(contender.model.encoder.embed_images.conv1.weight)
    contender.optimizer = torch.optim.AdamW(contender.params, lr=1e-5)
    assert contender.check()["resnet_in_graph"] is True


def test_table_prints_every_method_and_the_targets(capsys):
    report = tuning.run(tuning.Shape("ofa-nano-small", 1, 4, 2, 32, 2, 2), methods=("finetune", "prefix"),
                        warmup=0, reps=1, memory=False, in_process=True)
    text = tuning.format_table(report)
    assert "| finetune |" in text and "| prefix |" in text and "| none |" in text
    assert "prefix / finetune train step" in text and "≤ 0.7× target" in text
    assert math.isnan(report["prefix_memory_ratio"])  # memory skipped: reported as n/a, not invented


@pytest.mark.parametrize("kwargs,match", [
    ({"methods": ("prefix",)}, "finetune"),
    ({"methods": ("finetune", "ia3")}, "methods"),
    ({"inference": "beam"}, "inference"),
    ({"reps": 0}, "reps"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tuning.run(tuning.Shape("ofa-nano-small"), **kwargs)


@pytest.mark.parametrize("kwargs,match", [({"preset": "ofa-colossal"}, "preset"), ({"batch": 0}, "batch"),
                                          ({"preset": "ofa-nano-small", "image_size": 4096}, "image_size")])
def test_bad_shape(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tuning.Shape(**kwargs)
