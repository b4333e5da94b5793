"""Staged pretraining: finished stages are stored small and a rerun — after a kill inside a stage, or on a
fresh clone that only has the stored stages — ends with the same weights; fp16 storage barely moves the loss."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import mmprompt.nano.staged_pretrain as sp
from mmprompt import load_model
from mmprompt.data import PretrainDataset, ensure_synthetic, split_path
from mmprompt.data.synth import generate
from mmprompt.models.ofa import OFAConfig, OFAModel
from mmprompt.nano.staged_pretrain import StagedConfig, StagePlan, load_small_weights, run, save_small_weights
from mmprompt.training import seq2seq_loss

PLAN = (StagePlan("resnet", None, 2), StagePlan("one", "one-object", 2), StagePlan("ground", "grounding", 3),
        StagePlan("full", "full", 4, "polynomial"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def v3_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("v3") / "ci-v3", "ci", max_per_split=40, progress=False, world="v3")


def _cfg(root, data, name, plan=PLAN):
    return StagedConfig(preset="ofa-nano-small", image_size=64, batch_size=4, warmup_steps=0, profile="ci",
                        data_dir=str(data), run_dir=str(root / name / "run"), stage_dir=str(root / name / "stages"),
                        eval_every=2, save_every=1, eval_examples=8, probe_examples=16, plan=plan)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, v3_data):
    root = tmp_path_factory.mktemp("staged")
    return root, run(_cfg(root, v3_data, "a"))


def _weights(path):
    return load_file(path / "model.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stages_are_stored_small_with_records(first_run):
    root, final = first_run
    stages = root / "a" / "stages"
    assert sorted(p.name for p in stages.iterdir()) == ["0-resnet", "1-one", "2-ground", "3-full"]
    assert not (stages / "2-ground" / "model.safetensors").exists()  # only the newest stage keeps weights
    newest = _weights(stages / "3-full")
    assert {t.dtype for t in newest.values() if t.is_floating_point()} == {torch.float16}
    record = json.loads((stages / "3-full" / "stage.json").read_text())
    assert record["steps"] == 4 and record["stage"]["name"] == "full" and "val_loss" in record["final_metrics"]
    assert set(record["grounding_by_objects"]) <= {"1", "2", "3", "4", "5", "6"}
    assert record["continued_from"].startswith("stage 2 (ground)")
    lines = sp.status(_cfg(root, root, "a")).splitlines()  # status reads only the records
    assert len(lines) == 4 and lines[3].startswith("3-full (4 steps): done") and "grounding 2: 0 / 3:" in lines[3]
    history = json.loads((final / "pretrain.json").read_text())["history"]
    assert {r["stage"] for r in history} == {1, 2, 3}
    assert load_model(final).model.config.patch_image_size == 64


def test_a_kill_inside_a_stage_resumes_to_the_same_weights(first_run, v3_data, monkeypatch):
    root, final_a = first_run
    real_train = sp.train

    def killed_at_step_3_of_the_last_stage(model, data, tc, **kw):
        if tc.out_dir.name != "3-full":
            return real_train(model, data, tc, **kw)

        def kill(event):
            if event.get("step") == 3:
                raise KeyboardInterrupt

        return real_train(model, data, tc, callbacks=[kill], **kw)

    monkeypatch.setattr(sp, "train", killed_at_step_3_of_the_last_stage)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(root, v3_data, "b"))
    monkeypatch.setattr(sp, "train", real_train)
    assert (root / "b" / "run" / "3-full" / "last").is_dir()
    final_b = run(_cfg(root, v3_data, "b"))
    record = json.loads((root / "b" / "stages" / "3-full" / "stage.json").read_text())
    assert record["resumed_from"].startswith("run checkpoint")
    assert _same(_weights(final_a), _weights(final_b))


def test_a_fresh_clone_continues_from_the_stored_stages(first_run, v3_data):
    root, final_a = first_run
    run(_cfg(root, v3_data, "c", plan=PLAN[:2]))  # a first machine finished two stages ...
    shutil.rmtree(root / "c" / "run")  # ... and only the committed stage folder reaches the next one
    final_c = run(_cfg(root, v3_data, "c"))
    assert _same(_weights(final_a), _weights(final_c))
    with pytest.raises(ValueError, match="differs from this plan"):
        run(_cfg(root, v3_data, "c", plan=PLAN[:2] + (StagePlan("ground", "grounding", 5),)))


def test_fp16_storage_keeps_the_loss(tmp_path):
    """Tolerance: the shipped ofa-nano stored in fp16 changes the pretraining validation loss by < 0.1 %."""
    backbone = load_model("ofa-nano")
    root = ensure_synthetic("ci")
    ds = PretrainDataset(split_path(root, "pretrain", "val"), backbone.tokenizer, backbone.patch_image_size)
    batch = ds.collater([ds[i] for i in range(32)])

    def loss(model):
        with torch.no_grad():
            logits = model.eval()(**{k: batch[k] for k in ("input_ids", "patch_images", "patch_masks",
                                                            "decoder_input_ids")}).logits
        return float(seq2seq_loss(logits, batch["target_ids"], label_smoothing=0.0))

    before = loss(backbone.model)
    for dtype, tol in (("float16", 1e-3), ("bfloat16", 1e-2)):
        save_small_weights(backbone.model, tmp_path / dtype, dtype)
        fresh = OFAModel(OFAConfig.from_json(tmp_path / dtype / "config.json"))
        load_small_weights(fresh, tmp_path / dtype / "model.safetensors")
        after = loss(fresh)
        assert after != before and abs(after - before) < tol * before, (dtype, before, after)
    fp32_bytes = sum(t.numel() * 4 for t in backbone.model.state_dict().values())
    assert (tmp_path / "float16" / "model.safetensors").stat().st_size < 0.55 * fp32_bytes


@pytest.mark.parametrize("kwargs,match", [
    (dict(preset="ofa-giant"), "preset='ofa-giant'"), (dict(steps=0), "steps=0"),
    (dict(storage_dtype="int8"), "storage_dtype='int8'"), (dict(resnet_steps=-1), "resnet_steps=-1"),
    (dict(plan=(StagePlan("a", "nope", 3),)), "plan="), (dict(steps=1000, warmup_steps=200), "warmup_steps=200"),
])
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StagedConfig(**kwargs)
