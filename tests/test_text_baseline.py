import pytest
from PIL import Image

from mmprompt.data.synth import generate, split_path
from mmprompt.data.text_baseline import blind_accuracy, main
from mmprompt.data.tsv import encode_image, write_tsv


@pytest.fixture(scope="module")
def ve_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("tb") / "ci", "ci", seed=0, max_per_split=150, progress=False)


def test_generated_ve_is_not_solvable_from_text(ve_data):
    r = blind_accuracy(ve_data, "snli_ve")
    assert r["n"] == 100 and r["accuracy"] < 0.5, r


def test_a_leaky_dataset_is_caught(tmp_path):
    """The same classifier reads a label written into the hypothesis: the check can fail."""
    img = encode_image(Image.new("RGB", (8, 8)))
    labels = ("entailment", "contradiction", "neutral")
    for split, n in (("train", 60), ("dev", 30)):
        rows = [(f"u{i}", f"i{i}", img, f"there is a {labels[i % 3][:4]} circle", "some shapes", labels[i % 3])
                for i in range(n)]
        write_tsv(split_path(tmp_path, "snli_ve", split), "snli_ve", rows)
    assert blind_accuracy(tmp_path, "snli_ve")["accuracy"] == 1.0


def test_bad_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="task='refcoco'"):
        blind_accuracy(tmp_path, "refcoco")


def test_cli_prints_json(ve_data, capsys):
    main(["vqa", "--data-dir", str(ve_data)])
    assert '"accuracy"' in capsys.readouterr().out
