"""A saved-and-reloaded tiny Florence-2 through the whole ci-profile pipeline: prefix, the project's training
loop (default loss on the batch contract), evaluation on the four tasks via generate, prompt save/reload."""

import pytest
import torch

from mmprompt.data.synth import split_path
from mmprompt.eval.evaluation import MAIN_METRIC, EvalResult
from mmprompt.models.florence2 import (
    save_tiny_florence2,
)
from mmprompt.experiment.florence2 import florence2_backbone
from mmprompt.training import TrainConfig, train
from mmprompt.tuning import PrefixConfig, apply_prefix, fold, load_prompt, prefix_module, save_prompt

SPLITS = {"refcoco": "val", "caption": "val", "vqa": "val", "snli_ve": "dev"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_florence2_trains_evaluates_and_reloads_its_prompt(tmp_path, tiny_synthetic):
    model_dir = save_tiny_florence2(tmp_path / "florence2")
    backbone = florence2_backbone(model_dir)
    config = PrefixConfig(length=4, sites=("encoder_self", "decoder_self", "decoder_cross"), reparam=True,
                          reparam_hidden=16, dropout=0.0)
    apply_prefix(backbone.model, config)
    train_set = backbone.make_dataset("refcoco", split_path(tiny_synthetic, "refcoco", "train"))
    result = train(backbone.model, train_set,
                   TrainConfig(lr=0.2, max_steps=12, batch_size=4, warmup_steps=0, label_smoothing=0.0,
                               log_every=1, device="cpu", progress=False, seed=0),
                   collate_fn=train_set.collater)
    losses = [r["loss"] for r in result.history if r["event"] == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < losses[0] - 0.05  # a random tiny model learns slowly
    assert not backbone.model.model.language_model.shared.weight.requires_grad
    fold(prefix_module(backbone.model))  # the MLP is folded away before evaluation and export

    settings = backbone.default_eval_settings(batch_size=4, progress=False, max_examples=6)
    assert (settings.beam_size, settings.no_repeat_ngram_size) == (3, 3)
    results = {}
    for task, split in SPLITS.items():
        ds = backbone.make_dataset(task, split_path(tiny_synthetic, task, split))
        results[task] = backbone.evaluate(ds, settings)
        assert isinstance(results[task], EvalResult) and results[task].metrics["n"] == 6
        assert 0.0 <= results[task].score <= (10.0 if task == "caption" else 1.0), MAIN_METRIC[task]
    boxes = [row["prediction"] for row in results["refcoco"].predictions]
    assert all(b is None or len(b) == 4 for b in boxes)
    assert all(isinstance(row["prediction"], str) for row in results["vqa"].predictions)

    save_prompt(backbone.model, tmp_path / "prompt")
    reloaded = florence2_backbone(model_dir)
    load_prompt(reloaded.model, tmp_path / "prompt")
    ds = reloaded.make_dataset("refcoco", split_path(tiny_synthetic, "refcoco", "val"))
    again = reloaded.evaluate(ds, settings)
    assert [r["prediction"] for r in again.predictions] == boxes
    batch = ds.collater([ds[i] for i in range(2)])
    with torch.no_grad():
        assert torch.equal(reloaded.forward_logits(batch), backbone.forward_logits(batch))
