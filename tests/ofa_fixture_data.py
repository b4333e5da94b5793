"""A miniature of OFA-Sys' released datasets: the exact directory and file names OFA ships, a few rows per file,
real small JPEGs (URL-safe base64, as OFA stores them), OFA's pickles. Row contents are chosen to exercise
OFA's conventions (non-square images, VQA confidences, empty object items, an out-of-list answer, dummy test
answers, caption ids that differ from image ids, an extra trailing column).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
from collections import defaultdict
from pathlib import Path

from PIL import Image

SIZES = ((500, 333), (300, 400), (640, 480))
REFCOCO_ROWS = (  # uniq_id, image_id, expression, region_coord, image size index
    ("1001", "9001", "The man on the LEFT, holding a bat!", "10.5,20.25,300.0,320.0", 0),
    ("1002", "9002", "woman-in-red / far right", "150,30,299,399", 1),
    ("1003", "9003", "small dog", "0,0,639.5,479", 2),
)
ANS2LABEL = {"yes": 0, "no": 1, "2": 2, "red": 3, "house": 4}
VQA_ROWS = (  # uniq_id (question id), image_id, question, answers, objects
    ("262148000", "262148", "Is the house short", "0.3|!+yes&&1.0|!+no", "house&&short&&sky"),
    ("262148001", "262148", "What color is the roof?", "0.6|!+red&&0.9|!+maroon", "roof&&&&sky"),
    ("262148002", "262148", "How many windows", "1.0|!+2", ""),
)


def jpeg_b64(size: tuple[int, int], seed: int) -> str:
    """A real JPEG of ``size`` with a colour gradient, as URL-safe base64."""
    w, h = size
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 7 + seed * 40) % 256, (y * 5) % 256, (x + y + seed) % 256) for y in range(h) for x in range(w)])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return base64.urlsafe_b64encode(buf.getvalue()).decode("ascii")


def _write(path: Path, rows) -> None:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def _refcoco(d: Path, prefix: str, splits) -> None:
    imgs = [jpeg_b64(s, i) for i, s in enumerate(SIZES)]
    for split in splits:
        _write(d / f"{prefix}_{split}.tsv", [(u, i, t, b, imgs[k]) for u, i, t, b, k in REFCOCO_ROWS])


def make_ofa_data(root: Path) -> dict[str, Path]:
    """Write the miniature under ``root``; returns {dataset name: its directory}."""
    dirs = {n: root / f"{n}_data" for n in ("refcoco", "refcocoplus", "refcocog", "snli_ve", "caption", "vqa")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    _refcoco(dirs["refcoco"], "refcoco", ("train", "val", "testA", "testB"))
    _refcoco(dirs["refcocoplus"], "refcocoplus", ("train", "val", "testA", "testB"))
    _refcoco(dirs["refcocog"], "refcocog", ("train", "val", "test"))

    img = jpeg_b64(SIZES[0], 3)
    snli = [("0", "3001", img, "Two dogs run.", "A dog is running in a field", "entailment"),
            ("1", "3001", img, "a cat sleeps", "A dog is running in a field", "contradiction"),
            ("2", "3002", img, "The dog is fast", "A dog is running in a field", "neutral")]
    for split in ("train", "dev", "test"):
        _write(dirs["snli_ve"] / f"snli_ve_{split}.tsv", snli)

    cap = dirs["caption"]
    imgs = [jpeg_b64(s, 5 + i) for i, s in enumerate(SIZES)]
    _write(cap / "caption_stage1_train.tsv",
           [("0", "391895", "A man with a red helmet on a small moped, on a dirt road.", "man&&helmet", imgs[0]),
            ("1", "391895", "Man riding a motor bike on a dirt road on the countryside", "man", imgs[0]),
            ("2", "522418", "A woman wearing a net on her head cutting a cake.", "", imgs[1])])
    refs = ["A man with a red helmet on a small moped, on a dirt road.&&Man riding a motor bike on a dirt road.",
            "A woman cutting a large white sheet cake.&&A woman wearing a hair net cutting a cake."]
    _write(cap / "caption_stage2_train.tsv", [("0", "391895", refs[0], "man", imgs[0])])
    for split in ("val", "test"):
        _write(cap / f"caption_{split}.tsv", [("7", "184613", refs[0], "man", imgs[0]),
                                              ("8", "403013", refs[1], "woman", imgs[1])])
    (cap / "cider_cached_tokens").mkdir(exist_ok=True)
    df: defaultdict[tuple[str, ...], float] = defaultdict(float)
    for ng, v in {("a",): 40000.0, ("man",): 9000.0, ("a", "man"): 5000.0, ("dirt", "road"): 300.0}.items():
        df[ng] = v
    with open(cap / "cider_cached_tokens" / "coco-valid-words.p", "wb") as f:
        pickle.dump({"document_frequency": df, "ref_len": 5000.0}, f, protocol=2)
    (cap / "test_caption_coco_format.json").write_text(json.dumps({
        "images": [{"id": 184613}, {"id": 403013}],
        "annotations": [{"image_id": 184613, "id": 1, "caption": "A man on a moped."},
                        {"image_id": 403013, "id": 2, "caption": "A woman cutting a cake."}]}))

    vqa = dirs["vqa"]
    img = jpeg_b64(SIZES[2], 9)
    rows = [(*r, img, "a house under the sky") for r in VQA_ROWS]  # 7th column: ignored, as OFA's selected_cols do
    _write(vqa / "vqa_train.tsv", rows)
    _write(vqa / "vqa_val.tsv", rows)
    _write(vqa / "vqa_test.tsv", [(u, i, q, "1.0|!+no", o, img) for u, i, q, _, o in VQA_ROWS])  # dummy answers
    with open(vqa / "trainval_ans2label.pkl", "wb") as f:
        pickle.dump(ANS2LABEL, f)
    return dirs
