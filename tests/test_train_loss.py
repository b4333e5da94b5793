"""Unit tests of the training building blocks: loss, schedule, config, EMA, sampling, files."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmprompt.training import (EMA, TrainConfig, batch_weight, build_scheduler, epoch_batches,
                               lr_at, micro_batches_per_epoch, reduce_metrics, seq2seq_loss)
from mmprompt.training import checkpoint as ck
from mmprompt.core.atomic import atomic_dir


def _lp(row: list[float]) -> list[float]:
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


# ------------------------------------------------------------------ loss
def test_label_smoothed_loss_matches_hand_computation() -> None:
    row = [1.0, 2.0, 0.5]
    logits = torch.tensor([[row]])
    target = torch.tensor([[1]])
    lp = _lp(row)
    expected = -(0.9 * lp[1] + 0.05 * lp[0] + 0.05 * lp[2])  # eps/(V-1) on the others
    got = seq2seq_loss(logits, target, pad_id=99, label_smoothing=0.1)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_no_smoothing_equals_cross_entropy_and_pad_positions_are_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    target = torch.tensor([[3, 4, 1, 1], [2, 1, 1, 1]])
    logits[target == 1] = 1e4  # garbage at pad positions must not matter
    ref = F.cross_entropy(logits.reshape(-1, 7), target.reshape(-1), ignore_index=1)
    got = seq2seq_loss(logits, target, pad_id=1, label_smoothing=0.0)
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)
    total = seq2seq_loss(logits, target, pad_id=1, label_smoothing=0.0, reduction="sum")
    assert total.item() == pytest.approx(3 * ref.item(), abs=1e-4)  # 3 non-pad tokens


def test_constrained_smoothing_spreads_eps_over_allowed_tokens_only() -> None:
    row = [0.3, 5.0, 1.2, -0.4, 2.0]
    logits = torch.tensor([[row, row]])
    target = torch.tensor([[2, 1]])  # second position is padding
    mask = torch.zeros(1, 2, 5, dtype=torch.bool)
    mask[0, 0, [0, 2, 3]] = True  # token 1 (largest logit) is forbidden
    lp = _lp([row[0], row[2], row[3]])  # softmax over the allowed tokens only
    expected = -(0.9 * lp[1] + 0.05 * lp[0] + 0.05 * lp[2])  # eps/(3-1) each
    got = seq2seq_loss(logits, target, pad_id=1, label_smoothing=0.1, constraint_masks=mask)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_constrained_loss_single_allowed_token_is_zero_and_grads_finite() -> None:
    logits = torch.randn(1, 2, 6, requires_grad=True)
    target = torch.tensor([[4, 0]])
    mask = torch.zeros(1, 2, 6, dtype=torch.bool)
    mask[0, 0, 4] = True  # only the target: log p = 0, no smoothing
    mask[0, 1, [0, 5]] = True
    loss = seq2seq_loss(logits, target, pad_id=1, label_smoothing=0.1, constraint_masks=mask)
    row = logits[0, 1].detach().tolist()
    lp = _lp([row[0], row[5]])
    expected = (0.0 - (0.9 * lp[0] + 0.1 * lp[1])) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0].abs().sum() == 0  # the certain position carries no gradient
    assert logits.grad[0, 1, 1:5].abs().sum() == 0  # forbidden tokens get no gradient


def test_constraint_forbidding_the_target_is_an_error() -> None:
    mask = torch.ones(1, 1, 4, dtype=torch.bool)
    mask[0, 0, 2] = False
    with pytest.raises(ValueError, match="forbid a target"):
        seq2seq_loss(torch.zeros(1, 1, 4), torch.tensor([[2]]), constraint_masks=mask)


def test_all_pad_batch_gives_zero_with_a_graph() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = seq2seq_loss(logits, torch.ones(2, 3, dtype=torch.long), pad_id=1, label_smoothing=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.abs().sum() == 0


def test_loss_rejects_bad_shapes_and_arguments() -> None:
    with pytest.raises(ValueError, match="target_ids"):
        seq2seq_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        seq2seq_loss(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long), reduction="max")


def test_batch_weight_counts_target_tokens() -> None:
    batch = {"input_ids": torch.zeros(3, 5), "target_ids": torch.tensor([[4, 5, 1], [6, 1, 1],
                                                                        [1, 1, 1]])}
    assert batch_weight(batch, pad_id=1) == 3.0
    assert batch_weight({"x": torch.zeros(7, 2)}) == 7.0


# ------------------------------------------------------------------ schedule
def test_polynomial_schedule_warmup_middle_end() -> None:
    cfg = TrainConfig(lr=0.03, max_steps=100, warmup_ratio=0.06)
    assert cfg.warmup_for(100) == 6
    assert lr_at(0, cfg, 100) == pytest.approx(0.03 / 6)
    assert lr_at(5, cfg, 100) == pytest.approx(0.03)  # last warmup step at the peak
    assert lr_at(6, cfg, 100) == pytest.approx(0.03)  # decay starts at the peak
    assert lr_at(53, cfg, 100) == pytest.approx(0.015)  # halfway through the decay
    assert lr_at(99, cfg, 100) == pytest.approx(0.03 / 94)
    assert lr_at(100, cfg, 100) == pytest.approx(0.0)
    end = TrainConfig(lr=0.03, max_steps=100, warmup_ratio=0.06, end_lr=0.01)
    assert lr_at(100, end, 100) == pytest.approx(0.01)
    assert lr_at(53, end, 100) == pytest.approx(0.02)


def test_constant_schedule_and_explicit_warmup_steps() -> None:
    cfg = TrainConfig(lr=1e-3, max_steps=50, schedule="constant", warmup_steps=4)
    assert [lr_at(s, cfg, 50) for s in (0, 3, 4, 49)] == pytest.approx([2.5e-4, 1e-3, 1e-3, 1e-3])


def test_scheduler_drives_the_optimizer_like_lr_at() -> None:
    cfg = TrainConfig(lr=0.1, max_steps=20, warmup_ratio=0.2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, 20)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, cfg, 20) for s in range(20)])


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("field, value", [
    ("lr", 0.0), ("lr", float("nan")), ("weight_decay", -0.1), ("betas", (0.9, 1.0)),
    ("eps", 0.0), ("schedule", "cosine"), ("warmup_ratio", 1.0), ("warmup_steps", -1),
    ("max_steps", 0), ("epochs", 0), ("batch_size", 0), ("grad_accum", 0), ("clip_norm", -1.0),
    ("label_smoothing", 1.0), ("amp", "fp8"), ("ema_decay", 1.0), ("eval_every", 0),
    ("early_stopping_patience", 0), ("mode", "best"), ("log_every", 0), ("device", "tpu"),
    ("num_workers", -1), ("seed", -3), ("batch_size", 2.5),
])
def test_bad_config_values_raise_naming_the_field(field: str, value: object) -> None:
    kwargs = {"max_steps": 10, field: value}
    if field == "early_stopping_patience":
        kwargs["metric"] = "acc"
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}="):
        TrainConfig(**kwargs)


def test_config_cross_field_rules() -> None:
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig()  # neither max_steps nor epochs
    with pytest.raises(ValueError, match="metric"):
        TrainConfig(max_steps=5, early_stopping_patience=2)
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(max_steps=5, amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="resume"):
        TrainConfig(max_steps=5, resume=True)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=5, warmup_steps=5)
    assert TrainConfig(epochs=2, amp="bf16", device="cpu").to_dict()["betas"] == [0.9, 0.999]


# ------------------------------------------------------------------ EMA
def test_ema_math_and_swap() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 0.0]))
    ema.update([p])
    expected = torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 0])
    assert torch.allclose(ema.shadow[0], expected)
    with torch.no_grad():
        p.copy_(torch.tensor([5.0, 5.0]))
    ema.update([p])
    assert torch.allclose(ema.shadow[0], 0.9 * expected + 0.1 * 5)
    with ema.swapped([p]):
        assert torch.allclose(p, 0.9 * expected + 0.1 * 5)
    assert torch.equal(p.detach(), torch.tensor([5.0, 5.0]))


# ------------------------------------------------------------------ sampling
def test_epoch_batches_are_deterministic_and_shard_like_one_big_batch() -> None:
    a = epoch_batches(20, 4, epoch=3, seed=7)
    assert a == epoch_batches(20, 4, epoch=3, seed=7)
    assert a != epoch_batches(20, 4, epoch=4, seed=7)
    assert sorted(i for b in a for i in b) == list(range(20))
    big = epoch_batches(20, 4, epoch=1, seed=7)
    r0 = epoch_batches(20, 2, epoch=1, seed=7, rank=0, world_size=2)
    r1 = epoch_batches(20, 2, epoch=1, seed=7, rank=1, world_size=2)
    for k in range(5):
        assert sorted(r0[k] + r1[k]) == sorted(big[k])
    assert micro_batches_per_epoch(21, 4, world_size=2) == 3  # 11 per rank, padded by wrapping
    assert len(epoch_batches(21, 4, epoch=0, seed=0, rank=1, world_size=2)) == 3
    assert micro_batches_per_epoch(10, 4, drop_last=True) == 2


# ------------------------------------------------------------------ checkpoints and helpers
def test_save_tensors_round_trip_keeps_tied_weights_once(tmp_path: Path) -> None:
    emb = torch.randn(4, 3)
    tensors = {"enc.embed": emb, "dec.embed": emb, "head": emb[1:], "b": torch.zeros(2)}
    ck.save_tensors(tmp_path / "w.safetensors", tensors)
    back = ck.load_tensors(tmp_path / "w.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert torch.equal(back[k], v)


def test_atomic_dir_failure_keeps_the_old_directory(tmp_path: Path) -> None:
    ck.write_checkpoint(tmp_path / "last", weights={"w": torch.ones(2)}, meta={"step": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(tmp_path / "last") as tmp:
            (tmp / "weights.safetensors").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    back = ck.read_checkpoint(tmp_path / "last")
    assert back.meta == {"step": 1} and torch.equal(back.weights["w"], torch.ones(2))


def test_find_checkpoint_recovers_from_a_crash_between_renames(tmp_path: Path) -> None:
    ck.write_checkpoint(tmp_path / "last", weights={"w": torch.ones(1)}, meta={"step": 3})
    (tmp_path / "last").rename(tmp_path / "last.old")
    assert ck.find_checkpoint(tmp_path, "last") == tmp_path / "last.old"
    assert ck.find_checkpoint(tmp_path, "best") is None


def test_rng_state_survives_weights_only_round_trip(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ck.capture_rng()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    ck.restore_rng(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_reduce_metrics_in_one_process() -> None:
    assert reduce_metrics({"correct": 3, "loss": 1.5}) == {"correct": 3.0, "loss": 1.5}
    assert reduce_metrics({"acc": 3}, count=4) == {"acc": 0.75}
