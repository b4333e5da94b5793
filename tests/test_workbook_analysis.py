"""Measurements the notebooks make on tuned models: held-out loss (mmprompt.experiment.tune), FGSM sweeps of task
metrics (mmprompt.robustness.sweep), training-step cost (mmprompt.experiment.efficiency) and the prediction plots (mmprompt.workbook.viz)."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from mmprompt import load_model, tune  # noqa: E402
from mmprompt.data import split_path  # noqa: E402
from mmprompt.experiment.efficiency import saved_activation_bytes, step_cost  # noqa: E402
from mmprompt.experiment.tune import heldout_loss  # noqa: E402
from mmprompt.robustness.sweep import evaluate_under_attack, robustness_sweep  # noqa: E402
from mmprompt.robustness.attack import FGSM  # noqa: E402
from mmprompt.training.losses import Seq2SeqLoss  # noqa: E402
from mmprompt.tuning import PrefixConfig  # noqa: E402
from mmprompt.workbook.viz import gold_examples, plot_histories, plot_pretrain_history, prediction_examples  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone(random_ofa_dir):
    return load_model(random_ofa_dir)


@pytest.fixture(scope="module")
def tuned(backbone, tiny_synthetic):
    return tune(backbone, "refcoco", PrefixConfig(length=4), data_dir=tiny_synthetic, steps=2, batch_size=4,
                eval_examples=6, keep_model=True, progress=False)


def test_heldout_loss_is_the_token_mean_over_the_first_examples(backbone, tiny_synthetic):
    ds = backbone.make_dataset("vqa", split_path(tiny_synthetic, "vqa", "val"))
    batch = next(iter(DataLoader([ds[i] for i in range(5)], batch_size=5, collate_fn=ds.collater)))
    backbone.model.eval()
    with torch.no_grad():
        expected = float(Seq2SeqLoss(pad_id=1, label_smoothing=0.0)(backbone.model, batch))
    got = heldout_loss(backbone, None, "vqa", data_dir=tiny_synthetic, examples=5, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-5)
    assert heldout_loss(backbone, backbone.model, "vqa", data_dir=tiny_synthetic, examples=5) == pytest.approx(got)
    with pytest.raises(ValueError, match="examples=0"):
        heldout_loss(backbone, None, "vqa", data_dir=tiny_synthetic, examples=0)
    with pytest.raises(ValueError, match="task='ocr'"):
        heldout_loss(backbone, None, "ocr", data_dir=tiny_synthetic)


def test_clean_attack_free_evaluation_reproduces_tune_and_fgsm_raises_the_loss(backbone, tiny_synthetic, tuned):
    clean = evaluate_under_attack(backbone, tuned.model, "refcoco", None, data_dir=tiny_synthetic, examples=6)
    assert clean["acc@0.5"] == tuned.metrics["val"]["acc@0.5"] and clean["mean_iou"] == tuned.metrics["val"]["mean_iou"]
    assert clean["loss"] == pytest.approx(heldout_loss(backbone, tuned.model, "refcoco", data_dir=tiny_synthetic,
                                                       examples=6), rel=1e-5)
    attacked = evaluate_under_attack(backbone, tuned.model, "refcoco", FGSM(0.5), data_dir=tiny_synthetic, examples=6)
    assert attacked["loss"] > clean["loss"]


def test_robustness_sweep_rows(backbone, tiny_synthetic, tuned):
    rows = robustness_sweep(backbone, {"prefix": tuned.model, "frozen": backbone.model}, "snli_ve", [0.3],
                            ("text_embeds",), data_dir=tiny_synthetic, examples=4)
    assert [(r["method"], r["epsilon"]) for r in rows] == [("prefix", 0.0), ("prefix", 0.3), ("frozen", 0.0),
                                                           ("frozen", 0.3)]
    assert all(0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["loss"]) for r in rows)
    assert rows[1]["loss"] > rows[0]["loss"] and rows[3]["loss"] > rows[2]["loss"]
    with pytest.raises(ValueError, match="models"):
        robustness_sweep(backbone, {}, "snli_ve", [0.1])
    with pytest.raises(ValueError, match=r"models\['x'\]"):
        robustness_sweep(backbone, {"x": None}, "snli_ve", [0.1])


def test_step_cost(backbone, tiny_synthetic):
    cfg = backbone.model.config
    prefix = step_cost(backbone, "caption", PrefixConfig(length=4), data_dir=tiny_synthetic, batch_size=2, steps=1,
                       warmup=0)
    full = step_cost(backbone, "caption", "finetune", data_dir=tiny_synthetic, batch_size=2, steps=1, warmup=0)
    assert prefix["trainable"] == 4 * (cfg.encoder_layers + cfg.decoder_layers) * 2 * cfg.d_model
    assert full["trainable"] == sum(p.numel() for p in backbone.model.parameters())
    assert prefix["gradient_mb"] == pytest.approx(4 * prefix["trainable"] / 2**20)
    assert prefix["optimizer_mb"] == pytest.approx(2 * prefix["gradient_mb"])
    assert prefix["batch_size"] == 2 and prefix["step_time_s"] > 0 and prefix["peak_cuda_mb"] is None
    assert 0 < prefix["activation_mb"] <= full["activation_mb"]  # a frozen stem keeps no activations
    assert prefix["s_per_100_samples"] == pytest.approx(50 * prefix["step_time_s"])
    with pytest.raises(ValueError, match="zero-shot"):
        step_cost(backbone, "caption", "zero-shot", data_dir=tiny_synthetic)
    with pytest.raises(ValueError, match="steps=0"):
        step_cost(backbone, "caption", "prefix", data_dir=tiny_synthetic, steps=0)


def test_saved_activation_bytes_counts_saved_tensors_not_parameters():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    nbytes, loss = saved_activation_bytes(layer, lambda m, b: m(b["x"]).relu().sum(), {"x": x})
    assert nbytes == 2 * 4 * 8 * 4  # the input (for the weight's gradient) and the relu output, no weight
    loss.backward()
    assert x.grad is not None


def test_prediction_and_gold_examples(backbone, tiny_synthetic, tuned):
    ds = backbone.make_dataset("refcoco", split_path(tiny_synthetic, "refcoco", "val"))
    shown = prediction_examples(ds, {"prefix": tuned.predictions, "again": tuned.predictions}, n=2)
    assert [e["title"] for e in shown] == ["prefix", "again", "prefix", "again"]
    assert shown[0]["boxes"] == tuned.predictions[0]["reference"]["box"]
    assert shown[0]["pred_boxes"] == tuned.predictions[0]["prediction"] and shown[0]["texts"][1].startswith("IoU")
    with pytest.raises(ValueError, match="only 6 predictions"):
        prediction_examples(ds, {"prefix": tuned.predictions}, n=7)
    wrong = [dict(r, id="other") for r in tuned.predictions]
    with pytest.raises(ValueError, match="'other'"):
        prediction_examples(ds, {"prefix": wrong}, n=1)
    vqa = backbone.make_dataset("vqa", split_path(tiny_synthetic, "vqa", "val"))
    gold = gold_examples(vqa, n=3)
    assert len(gold) == 3 and gold[0]["texts"][0].startswith("Q: ") and "boxes" not in gold[0]
    assert gold_examples(ds, n=1)[0]["boxes"] == ds[0]["ref"]["box"]


def test_plot_histories_and_pretrain_history():
    hist = [{"event": "train", "step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 11)]
    hist.append({"event": "eval", "step": 10, "acc": 0.5})
    ax = plot_histories({"a": hist, "b": hist[:5]}, smooth=2)
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [9, 4]
    ax = plot_histories({"a": hist}, key="acc", event="eval")
    assert list(ax.get_lines()[0].get_ydata()) == [0.5]
    with pytest.raises(ValueError, match="no history has 'eval' records with 'bleu'"):
        plot_histories({"a": hist}, key="bleu", event="eval")
    stages = [{"event": "train", "step": 2, "loss": 5.0, "stage": 0}, {"event": "eval", "step": 2, "val_loss": 4.0,
                                                                      "stage": 0},
              {"event": "train", "step": 3, "loss": 4.0, "stage": 1}, {"event": "eval", "step": 3, "val_loss": 3.0,
                                                                      "stage": 1}]
    ax = plot_pretrain_history(stages)
    train, val = ax.get_lines()[:2]
    assert list(train.get_xdata()) == [2, 5] and list(val.get_ydata()) == [4.0, 3.0]
    plt.close("all")


def test_load_backbone_and_example_batch(backbone, tiny_synthetic):
    from mmprompt.workbook import api as wb

    again = wb.load_backbone("ofa-nano", backbone.source, "ci", seed=0)  # model_dir wins over the name
    assert again.source == backbone.source
    assert next(again.model.parameters()).device.type == "cpu"
    batch = wb.example_batch(backbone, "snli_ve", "ci", tiny_synthetic, n=3)
    assert batch["input_ids"].shape[0] == 3 and batch["patch_images"].shape[0] == 3
    assert len(wb.example_batch(backbone, "snli_ve", "ci", tiny_synthetic, n=50)["ids"]) == 8  # capped at the split
    with pytest.raises(ValueError, match="n=0"):
        wb.example_batch(backbone, "snli_ve", "ci", tiny_synthetic, n=0)
