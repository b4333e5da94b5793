"""Serving and training four tasks through one prompt bank on the shipped nano: mixed collation, one-call
answers equal to each row answered alone, and multi-task prefix tuning in one loop."""

import pytest
import torch

from mmprompt.data import collate_mixed, ensure_synthetic, split_path
from mmprompt.eval.mixed import answer_mixed
from mmprompt.experiment.backbones import load_model
from mmprompt.experiment.bank import train_bank
from mmprompt.data.tasks import TASKS
from mmprompt.experiment.profiles import SPLITS
from mmprompt.tuning import PrefixConfig
from mmprompt.tuning.bank import apply_bank, remove_bank


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    return load_model("ofa-nano")


@pytest.fixture(scope="module")
def datasets(backbone):
    root = ensure_synthetic("ci", progress=False)
    return {t: backbone.make_dataset(t, split_path(root, t, SPLITS[t][0])) for t in TASKS}


def mixed_samples(datasets, per_task=2):
    return [datasets[t][k] for k in range(per_task) for t in TASKS]


def test_collate_mixed_keeps_every_rows_task(datasets):
    samples = mixed_samples(datasets)
    batch = collate_mixed(samples)
    assert batch["tasks"] == [s["task"] for s in samples] == list(TASKS) * 2
    assert batch["task"] == "mixed" and batch["input_ids"].shape[0] == 8
    assert batch["decoder_prompt_lengths"].tolist() == [s["prompt_length"] for s in samples]
    with pytest.raises(ValueError, match="a batch holds one task"):
        datasets["vqa"].collater(samples)


def test_one_call_answers_equal_each_row_answered_alone(backbone, datasets):
    model = backbone.model
    bank = apply_bank(model)
    try:
        for i, task in enumerate(TASKS):
            bank.add(task, PrefixConfig(length=8, dropout=0.0, init_std=0.3, seed=i))
        samples = mixed_samples(datasets)
        batch = collate_mixed(samples)
        with bank.route(batch["tasks"]):
            together = answer_mixed(model, batch, datasets, beam_size=2, caption_max_len=8)
        for i, sample in enumerate(samples):
            one = collate_mixed([sample])
            with bank.route(one["tasks"]):
                assert answer_mixed(model, one, datasets, beam_size=2, caption_max_len=8) == [together[i]]
        for task, answer in zip(batch["tasks"], together):
            if task == "refcoco":
                assert answer is None or len(answer) == 4
            elif task in ("snli_ve", "vqa"):
                assert answer in datasets[task].candidates
            else:
                assert isinstance(answer, str) and answer
    finally:
        remove_bank(model)


def test_multi_task_training_in_one_loop_updates_only_the_prompts(backbone):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    result = train_bank(backbone, ("refcoco", "vqa"), steps=2, length=4, zero_shot=True, progress=False)
    assert result.steps == 4 and result.bank.names == ["refcoco", "vqa"]
    assert result.trainable == {"refcoco": 4 * 12 * 2 * 128, "vqa": 4 * 12 * 2 * 128}
    assert set(result.scores) == set(result.zero_shot) == {"refcoco", "vqa"}
    fresh = PrefixConfig(length=4, seed=0)
    from mmprompt.tuning.prefix import new_prefix_module

    start = new_prefix_module(backbone.model, fresh)  # what the refcoco prompt started from
    moved = [(a - b).abs().max() for a, b in zip(result.bank.prompt("refcoco").parameters(), start.parameters())]
    assert max(moved) > 0  # trained
    assert all(torch.equal(v, before[k]) for k, v in backbone.model.state_dict().items())  # backbone untouched
    frozen = {n: p for n, p in result.model.named_parameters() if not n.startswith("mmprompt_bank.")}
    assert all(not p.requires_grad for p in frozen.values())
    assert all(torch.equal(p, before[n]) for n, p in frozen.items() if n in before)


def test_bad_tasks_refused_before_training(backbone):
    with pytest.raises(ValueError, match=r"tasks=\['ocr'\]: a non-empty list of distinct tasks"):
        train_bank(backbone, ["ocr"])
