"""``python -m mmprompt.bench gpu``: refuses to pretend without CUDA; its code runs on the CPU with --dry-run."""

import json
import math

import pytest
import torch

from mmprompt.bench import gpu
from mmprompt.bench.__main__ import main as bench_main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_main(["gpu"]) == 0
    out = capsys.readouterr().out
    assert "CUDA is not available" in out and "|" not in out  # no table, no numbers


def test_dry_run_exercises_the_measurements_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--dry-run", "--peak-tflops", "0.5", "--methods", "finetune,prefix", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("DRY RUN") and "| ofa-nano-small | prefix |" in printed
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["peak_bf16_tflops"] == 0.5
    rows = report["presets"]["ofa-nano-small"]["results"]
    assert set(rows) == {"finetune", "prefix", "none"}
    ft, pre = rows["finetune"], rows["prefix"]
    for r in (ft, pre):
        assert r["flops"] > 0 and r["train_samples_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["mfu"] == pytest.approx(r["flops"] / r["step_seconds"] / 0.5e12)
    # the finetuning step does the weight gradients and the ResNet backward that the prefix step skips
    assert ft["flops"] > 1.5 * pre["flops"]
    assert ft["memory_ratio"] == 1.0 and math.isfinite(pre["memory_ratio"])
    assert pre["infer_samples_per_s"] > 0 and rows["none"]["infer_time_ratio"] == 1.0


def test_peak_table_and_bad_input():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops("Some Future GPU") is None
    with pytest.raises(ValueError, match="presets"):
        gpu.run(presets=("ofa-colossal",), device="cpu")
    with pytest.raises(ValueError, match="methods"):
        gpu.run(presets=("ofa-nano-small",), methods=("prefix",), device="cpu")
    with pytest.raises(ValueError, match="peak_tflops"):
        gpu.run(presets=("ofa-nano-small",), peak_tflops_override=-1.0, device="cpu")


def test_out_of_memory_is_reported_not_raised(monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu, "measure_preset", oom)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    report = gpu.run(presets=("ofa-nano-small",), batch=64, image_size=64, device="cpu")
    block = report["presets"]["ofa-nano-small"]
    assert "out of memory at batch 64" in block["error"] and block["results"] == {}
    assert "| ofa-nano-small | CUDA out of memory at batch 64" in gpu.format_table(report)
