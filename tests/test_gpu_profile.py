"""The gpu profile's per-task recipe, and tune running it (on the CPU, with the device overridden)."""

import pytest
import torch

from mmprompt import load_model, tune
from mmprompt.models.ofa import OFAModel
from mmprompt.data.tasks import TASKS
from mmprompt.experiment.profiles import GPU_TASK_DEFAULTS, PROFILES, get_profile, gpu_recipe, resolve_profile


def test_the_papers_prompt_tuning_recipe():
    for task in TASKS:
        p = resolve_profile("gpu", task, "prefix")
        assert p.lr_for("prefix") == 0.03 and p.prompt_length == 64 and p.beam_size == 5
        assert p.warmup_ratio == 0.06 and p.label_smoothing == 0.1 and p.image_size == 480
        assert p.amp == "bf16" and p.tf32 and p.num_workers > 0
        assert p.effective_batch_size == (128 if task in ("refcoco", "snli_ve") else 256)
        assert p.ema_decay == (0.9999 if task == "vqa" else None)
    ref = resolve_profile("gpu", "refcoco", "prefix")
    assert ref.epochs == 100 and ref.eval_every == 500 and ref.grad_accum(1) == 8 and ref.grad_accum(8) == 1
    assert ref.grad_accum(3) == 3  # 16 x 3 x 3 = 144 >= 128: rounded up


def test_finetuning_follows_ofas_scripts_per_size():
    large = resolve_profile("gpu", "refcoco", "finetune", "large")
    base = resolve_profile("gpu", "refcoco", "finetune", "base")
    assert large.lr_for("finetune") == 3e-5 and base.lr_for("finetune") == 5e-5 and large.image_size == 512
    vqa_l, vqa_b = resolve_profile("gpu", "vqa", "finetune", "large"), resolve_profile("gpu", "vqa", "finetune", "base")
    assert (vqa_l.steps, vqa_l.epochs, vqa_l.warmup_steps, vqa_l.effective_batch_size) == (40_000, None, 1000, 512)
    assert (vqa_b.steps, vqa_b.epochs, vqa_b.warmup_steps, vqa_b.warmup_ratio) == (None, 15, None, 0.04)
    assert vqa_l.freeze_token_embeddings and vqa_l.ema_decay == 0.9999
    assert resolve_profile("gpu", "snli_ve", "finetune").label_smoothing == 0.0
    # the light-weight methods share the prompt recipe but keep their own learning rates
    bitfit = resolve_profile("gpu", "caption", "bitfit")
    assert bitfit.lr_for("bitfit") == PROFILES["gpu"].lr["bitfit"] and bitfit.epochs == 5


def test_overrides_and_the_cpu_profiles_are_unchanged():
    p = resolve_profile("gpu", "refcoco", "adapter", lr=2e-4, epochs=3, image_size=384, eval_every=None)
    assert p.lr_for("adapter") == 2e-4 and p.epochs == 3 and p.image_size == 384 and p.eval_every is None
    for name in ("ci", "cpu"):
        assert resolve_profile(name, "vqa", "finetune", "large") == get_profile(name)
    with pytest.raises(ValueError, match="unknown profile field"):
        resolve_profile("gpu", "refcoco", "prefix", epoch=3)
    with pytest.raises(ValueError, match="image_size=8"):
        resolve_profile("gpu", "refcoco", "prefix", image_size=8)
    with pytest.raises(ValueError, match="family='ia3'"):
        gpu_recipe("refcoco", "ia3")
    assert set(GPU_TASK_DEFAULTS) == set(TASKS)


def test_ofa_size_is_read_off_the_shape():
    from mmprompt.experiment.backbones import OFABackbone

    assert OFABackbone(OFAModel.from_preset("ofa-tiny", seed=0, vocab_size=300), None).ofa_size == "tiny"
    assert OFABackbone(OFAModel.from_preset("ofa-nano-small", seed=0), None).ofa_size is None


@pytest.fixture(scope="module")
def backbone(random_ofa_dir):
    return load_model(random_ofa_dir)


def test_tune_runs_the_gpu_recipe(backbone, tiny_synthetic, monkeypatch):
    seen = {}
    import mmprompt.experiment.tune as experiment

    real_train = experiment.train

    def spy(model, data, cfg, **kw):
        seen["cfg"], seen["image"] = cfg, data[0]["patch_image"].shape[-1]
        return real_train(model, data, cfg, **kw)

    monkeypatch.setattr(experiment, "train", spy)
    torch.set_num_threads(1)
    r = tune(backbone, "vqa", "prefix", profile="gpu", data_dir=tiny_synthetic, steps=1, eval_examples=2,
             test_splits=False, progress=False,
             batch_size=2, recipe={"device": "cpu", "amp": "none", "image_size": 64, "num_workers": 0,
                                   "effective_batch_size": 4, "prompt_length": 3})
    cfg = seen["cfg"]
    assert (cfg.lr, cfg.grad_accum, cfg.batch_size, cfg.ema_decay) == (0.03, 2, 2, 0.9999)
    assert (cfg.epochs, cfg.max_steps, cfg.label_smoothing, cfg.warmup_ratio) == (40, 1, 0.1, 0.06)
    assert seen["image"] == 64 and r.config["length"] == 3 and r.steps == 1
    assert list(r.metrics) == ["val"] and 0.0 <= r.score <= 1.0


def test_tune_refuses_a_bad_recipe_before_work(backbone, tiny_synthetic):
    with pytest.raises(ValueError, match="recipe="):
        tune(backbone, "vqa", "prefix", data_dir=tiny_synthetic, recipe=[("epochs", 1)])
    with pytest.raises(ValueError, match="unknown profile field"):
        tune(backbone, "vqa", "prefix", data_dir=tiny_synthetic, recipe={"epoch": 1})
    with pytest.raises(ValueError, match="given both"):
        tune(backbone, "vqa", "prefix", data_dir=tiny_synthetic, steps=2, recipe={"steps": 1})
