"""World v3: the pretraining mixture holds every downstream skill, keeps the shift, streams deterministically,
and leaves the v2 files byte-identical."""

import re
from collections import Counter

import pytest

from mmprompt.data import load_tokenizer
from mmprompt.data.mixture import MIXTURES, MixtureSpec, MixtureStream, mixture_example
from mmprompt.data.synth import dataset_name, file_sha256, generate, read_manifest, split_path
from mmprompt.data.tsv import read_tsv
from mmprompt.data.world import HELD_OUT_COMBOS, combos_in

# sha256 of manifest.json (which lists every file's sha256) of `generate(out, profile, max_per_split=20)`,
# made by the generator before world v3 existed (commit 6124bf6).
V2_MANIFESTS = {"ci": "89e8e3ebc4b1723961aaed3c46728a730c420260139284faf2bba5f8cf7e520a",
                "cpu": "f22eb976929c6e9b9f3cc507e2680fd8e87b4aa951283d1b75883e1cb5b36c8c"}
DOWNSTREAM_ONLY = re.compile(r"\b(beneath|under|over|far|highest|furthest|larger|maybe|contain|any|exactly|"
                             r"shows|in the picture)\b")


@pytest.fixture(scope="module")
def examples():
    return [mixture_example(MIXTURES["full"], 0, "test", i) for i in range(1500)]


@pytest.fixture(scope="module")
def v3_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("v3") / "ci-v3", "ci", max_per_split=30, progress=False, world="v3")


@pytest.mark.parametrize("profile", ["ci", "cpu"])
def test_v2_files_are_byte_identical_to_the_generator_before_v3(tmp_path, profile):
    out = generate(tmp_path / profile, profile, max_per_split=20, progress=False)
    assert file_sha256(out / "manifest.json") == V2_MANIFESTS[profile]
    assert "world" not in read_manifest(out)


def test_v3_is_its_own_directory_with_the_same_downstream_files(v3_dir, tmp_path):
    assert dataset_name("cpu", world="v3") == "cpu-v3" and dataset_name("cpu") == "cpu"
    assert dataset_name("ci", 2, 64, "v3") == "ci-seed2-64px-v3"
    man = read_manifest(v3_dir)
    assert man["world"] == "v3" and man["format_version"] == 1
    v2 = generate(tmp_path / "v2", "ci", max_per_split=30, progress=False)
    for name in ("refcoco_testB.tsv", "snli_ve_dev.tsv", "caption_val.tsv", "vqa_train.tsv", "tokenizer/tokenizer.json"):
        assert file_sha256(v3_dir / name) == file_sha256(v2 / name), name
    assert file_sha256(v3_dir / "pretrain_val.tsv") != file_sha256(v2 / "pretrain_val.tsv")
    rows = list(read_tsv(split_path(v3_dir, "pretrain", "val"), "pretrain"))
    assert len(rows) == 30 and max(r.num_objects for r in rows) == 6
    with pytest.raises(ValueError, match="world='v4'"):
        dataset_name("ci", world="v4")


def test_every_downstream_skill_is_in_the_mixture(examples):
    kinds = Counter((e.subtask, e.kind) for e in examples)
    for kind in ("relation", "extreme", "size", "attribute"):
        assert kinds["grounding", kind] >= 15, kind
    for kind in ("count", "exists", "relation", "extreme", "attribute"):
        assert kinds["vqa", kind] >= 10, kind
    for kind in ("caption", "exists", "count", "attribute", "relation"):
        assert kinds["itm", kind] >= 5, kind
    for sub in ("listing", "caption", "grounded_caption", "infill"):
        assert sum(v for (s, _), v in kinds.items() if s == sub) >= 30, sub
    objects = Counter(len(e.scene.objects) for e in examples)
    assert set(objects) == {1, 2, 3, 4, 5, 6} and min(objects.values()) >= 120
    counts = Counter(e.target for e in examples if (e.subtask, e.kind) == ("vqa", "count"))
    assert max(counts.values()) < 0.45 * sum(counts.values())  # answers spread, not one dominant count
    itm = Counter(e.target for e in examples if e.subtask == "itm")
    assert abs(itm["yes"] - itm["no"]) < 0.2 * sum(itm.values())


def test_the_shift_stays(examples):
    assert not any(combos_in(e.scene) & HELD_OUT_COMBOS for e in examples)  # held-out pairs never shown
    texts = [e.source + " " + e.target for e in examples if e.subtask != "caption"]
    assert not [t for t in texts if DOWNSTREAM_ONLY.search(t)]  # downstream-only phrasings and labels
    relational = [t for t in texts if re.search(r"\b(left of|leftmost|lowest|bigger|above)\b", t)]
    assert len(relational) > 100


def test_pretraining_words_are_tokenizer_words(examples, v3_dir):
    vocab = {w.lstrip("Ġ") for w in load_tokenizer(v3_dir / "tokenizer").get_vocab()}
    words = {w for e in examples for w in re.sub(r"\[\[[^\]]*\]\]|<mask>|[?\",]", " ", e.source + " " + e.target).split()}
    assert words - vocab == set()


def test_stream_is_a_pure_function_of_its_index(v3_dir):
    tok = load_tokenizer(v3_dir / "tokenizer")
    a = MixtureStream(MIXTURES["grounding"], tok, 64, 50, seed=3, stream="s")
    b = MixtureStream(MIXTURES["grounding"], tok, 64, 50, seed=3, stream="s")
    assert all(a[i]["labels"].tolist() == b[i]["labels"].tolist() for i in (0, 7, 49))
    assert (a[7]["patch_image"] == b[7]["patch_image"]).all()
    other = MixtureStream(MIXTURES["grounding"], tok, 64, 50, seed=3, stream="t")
    assert [a.example(i).target for i in range(10)] != [other.example(i).target for i in range(10)]
    assert min(len(a.example(i).scene.objects) for i in range(50)) >= 2 and a.subtasks[0] == "listing"
    batch = a.collater([a[i] for i in range(4)])
    assert batch["patch_images"].shape == (4, 3, 64, 64) and batch["task"] == "pretrain"
    with pytest.raises(IndexError):
        a.example(50)


@pytest.mark.parametrize("kwargs,match", [
    (dict(objects=(0, 3)), "objects="), (dict(objects=(2, 7)), "objects="),
    (dict(subtasks=(("ocr", 1.0),)), "subtasks="), (dict(vqa_kinds=(("count", -1.0),)), "vqa_kinds="),
])
def test_bad_mixture_is_rejected(kwargs, match):
    base = dict(name="x", objects=(1, 2), subtasks=(("listing", 1.0),))
    with pytest.raises(ValueError, match=match):
        MixtureSpec(**{**base, **kwargs})
