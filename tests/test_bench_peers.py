"""The peers benchmark: the attention probe, and a tiny end-to-end run (PEFT is optional)."""

import json

import pytest
import torch

from mmprompt.bench import available, peers
from mmprompt.bench.peers import AttentionProbe, apply_mmprompt, build_bart


pytestmark = pytest.mark.usefixtures("one_thread")


def test_probe_sees_exactly_the_prefixed_sites_layers_and_steps():
    model = apply_mmprompt(build_bart("tiny"), 3, sites=("encoder_self", "decoder_cross"),
                           layers={"encoder": [1], "decoder": [1]})
    model.eval()
    x = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    with AttentionProbe(model) as probe, torch.no_grad():
        model(input_ids=x, decoder_input_ids=x[:, :4])
    assert probe.reached() == {"encoder_self": [1], "decoder_self": [], "decoder_cross": [1]}
    assert sorted({(c.kind, c.layer, c.extra) for c in probe.calls}) == [
        ("decoder_cross", 0, 0), ("decoder_cross", 1, 3), ("decoder_self", 0, 0), ("decoder_self", 1, 0),
        ("encoder_self", 0, 0), ("encoder_self", 1, 3)]
    probe.clear()
    with probe, torch.no_grad():
        model.generate(input_ids=x, max_new_tokens=3, min_new_tokens=3, num_beams=2, pad_token_id=1, eos_token_id=2)
    assert probe.decoding_calls() == (0, 2 * 3)  # decoder self-attention carries no prefix in this config
    cross = [c for c in probe.calls if c.kind == "decoder_cross"]
    assert {c.extra for c in cross if c.layer == 1} == {3} and {c.extra for c in cross if c.layer == 0} == {0}
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    assert ALL_ATTENTION_FUNCTIONS["sdpa"].__name__ == "sdpa_attention_forward"  # restored on exit


def test_without_peft_the_bench_skips_with_a_clear_message(monkeypatch, capsys):
    monkeypatch.setattr(peers, "peft_available", lambda: False)
    assert peers.main(["--preset", "tiny"]) == 0
    assert "PEFT is not installed" in capsys.readouterr().out
    assert "skipped" in peers.run(preset="tiny", length=2)
    assert "peers" in available()


def test_bad_arguments_are_refused_before_work():
    with pytest.raises(ValueError, match="preset='huge'"):
        peers.run(preset="huge")
    with pytest.raises(ValueError, match="length=0"):
        peers.run(preset="tiny", length=0)
    with pytest.raises(ValueError, match="rounds=0"):
        peers.run(preset="tiny", rounds=0)


def test_tiny_bench_end_to_end(tmp_path, capsys):
    pytest.importorskip("peft", reason="PEFT is an optional extra (pip install 'mmprompt[peers]')")
    out = tmp_path / "peers.json"
    argv = ["--preset", "tiny", "--length", "2", "--batch", "1", "--src-len", "8", "--tgt-len", "4",
            "--warmup", "0", "--reps", "2", "--in-process", "--json", str(out)]
    assert peers.main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    mm, pf = report["results"]["mmprompt"], report["results"]["peft"]
    assert mm["trainable"] == pf["trainable"] == 2 * 2 * 2 * 32  # equal sites, equal prefix tables
    assert len(mm["step_seconds_all"]) == 2 and report["time_ratio"] > 0
    features = report["features"]
    assert features["encoder self-attention"]["mmprompt"].startswith("yes: layers [0, 1]")
    assert features["cross-attention"]["mmprompt"].startswith("yes: layers [0, 1]")
    assert features["encoder self-attention"]["peft"] == features["cross-attention"]["peft"] == "no"
    assert features["decoder self-attention"]["peft"].startswith("yes")
    timed = features["sites of the timed configurations"]
    assert timed["mmprompt"] == timed["peft"] == "{'decoder_self': [0, 1]}"
    for feature in ("depth control", "greedy generate", "beam search (3 beams)", "gradient checkpointing",
                    "MLP reparameterisation folding", "refuses a prompt saved on another backbone"):
        assert features[feature]["mmprompt"].startswith("yes"), feature
    assert "| feature (probed) | mmprompt | PEFT prefix tuning |" in printed
    assert "mmprompt / PEFT: step time" in printed
