"""Issue #7's end-to-end check: a saved-and-reloaded tiny Florence-2 runs a workbook notebook at the ci profile
(notebook 04, prefixes on both stacks and bottom/top depth, through the papermill runner)."""

import json

import pytest

from mmprompt.workbook import runs_cli
from mmprompt.models.florence2 import ensure_tiny_florence2

from test_notebooks import DEPTH_NB


@pytest.mark.slow
def test_tiny_florence2_runs_the_depth_notebook(tmp_path):
    model_dir = ensure_tiny_florence2(tmp_path / "tiny-florence2")  # saved with save_pretrained, reloaded
    out = tmp_path / "out"
    assert runs_cli.main(["run", str(DEPTH_NB), "-p", "model_dir", str(model_dir), "-p", "depth", "1",
                      "--out", str(out)]) == 0
    (run_dir,) = [p for p in (out / "04_prompt_depth").iterdir() if p.name != "_failed"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    layers = json.loads((model_dir / "config.json").read_text())["text_config"]
    d_model = layers["d_model"]
    # depth 1 from the bottom on both stacks: 64 key/value prefixes in one encoder and one decoder layer
    assert metrics["trainable"] == 64 * 2 * 2 * d_model
    assert set(metrics["results"]["refcoco"]) >= {"zero-shot", "encoder only", "decoder only", "encoder+decoder"}
