import base64
import io
import logging

import pytest
from PIL import Image

from mmprompt.data.tsv import (
    LAYOUTS,
    CaptionRecord,
    PretrainRecord,
    RefcocoRecord,
    SnliVeRecord,
    TSVFormatError,
    TSVReader,
    VqaRecord,
    count_rows,
    encode_image,
    read_tsv,
    write_tsv,
)


def _img(w=40, h=30, color=(200, 10, 10)):
    return Image.new("RGB", (w, h), color)


B64 = encode_image(_img(), "PNG")

ROWS = {
    "refcoco": [("r1", "i1", "the red circle", "1,2,30,25", B64), ("r2", "i2", "left star", "0,0,40,30", B64)],
    "snli_ve": [("s1", "i1", B64, "there is a star", "two shapes", "neutral")],
    "caption": [("c1", "i1", "a red circle&&two shapes", "circle&&star", B64), ("c2", "i2", "one", "", B64)],
    "vqa": [("v1", "i1", "what color?", "1.0|!+red&&0.3|!+orange", "circle", B64)],
    "pretrain": [
        ("p1", "i1", "grounding", "the star", "[[1,2,3,4]]", "2", B64),
        ("p2", "", "infill", "a <mask> star", "a red star", "1", ""),
    ],
}


@pytest.mark.parametrize("task", list(ROWS))
def test_write_read_round_trip(tmp_path, task):
    path = tmp_path / f"{task}.tsv"
    assert write_tsv(path, task, ROWS[task]) == len(ROWS[task])
    assert count_rows(path) == len(ROWS[task])
    recs = list(read_tsv(path, task))
    assert [r.uniq_id for r in recs] == [row[0] for row in ROWS[task]]
    assert [r.line for r in recs] == list(range(1, len(recs) + 1))
    first = recs[0]
    if task != "pretrain" or first.image is not None:
        assert first.image.size == (40, 30) and first.image.convert("RGB").getpixel((5, 5)) == (200, 10, 10)
    if task == "refcoco":
        assert isinstance(first, RefcocoRecord) and first.text == "the red circle" and first.box == (1.0, 2.0, 30.0, 25.0)
    elif task == "snli_ve":
        assert isinstance(first, SnliVeRecord)
        assert (first.hypothesis, first.premise, first.label) == ("there is a star", "two shapes", "neutral")
    elif task == "caption":
        assert isinstance(first, CaptionRecord)
        assert first.captions == ["a red circle", "two shapes"] and first.objects == ["circle", "star"]
        assert recs[1].objects == []
    elif task == "vqa":
        assert isinstance(first, VqaRecord) and first.answers == {"red": 1.0, "orange": 0.3} and first.objects == ["circle"]
    else:
        assert isinstance(first, PretrainRecord) and (first.subtask, first.num_objects) == ("grounding", 2)
        assert recs[1].image is None and recs[1].target == "a red star"


def test_reads_real_ofa_style_rows(tmp_path):
    """Standard (non URL-safe) base64 of a JPEG, CRLF line ends, blank trailing line: as in OFA's files."""
    buf = io.BytesIO()
    _img(64, 48).save(buf, "JPEG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    line = "\t".join(["12", "coco_1", "man in red", "3.5,4.25,60.0,47.9", b64])
    path = tmp_path / "refcoco_val.tsv"
    path.write_bytes((line + "\r\n" + line.replace("12", "13", 1) + "\r\n\n").encode())
    recs = list(read_tsv(path, "refcoco"))
    assert [r.uniq_id for r in recs] == ["12", "13"] and recs[0].box == (3.5, 4.25, 60.0, 47.9)
    assert count_rows(path) == 2


def test_writer_refuses_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="tabs and newlines"):
        write_tsv(tmp_path / "x.tsv", "refcoco", [("a", "b", "has\ttab", "0,0,1,1", B64)])
    with pytest.raises(ValueError, match="fields"):
        write_tsv(tmp_path / "x.tsv", "refcoco", [("a", "b")])
    assert not (tmp_path / "x.tsv").exists()
    assert not list(tmp_path.iterdir())  # no temp file left behind


BAD = {
    "corrupt base64 image": ("refcoco", ("r", "i", "text", "0,0,1,1", "!!!not-base64!!!")),
    "not a decodable image": ("refcoco", ("r", "i", "text", "0,0,1,1", base64.urlsafe_b64encode(b"hello").decode())),
    "wrong column count": ("refcoco", ("r", "i", "text", "0,0,1,1")),
    "outside the 40x30 image": ("refcoco", ("r", "i", "text", "10,10,80,20", B64)),
    "empty box": ("refcoco", ("r", "i", "text", "10,10,5,20", B64)),
    "empty text": ("refcoco", ("r", "i", "  ", "0,0,1,1", B64)),
    "empty caption": ("caption", ("c", "i", "", "", B64)),
    "empty reference": ("caption", ("c", "i", "a cat&&", "", B64)),
    "empty hypothesis": ("snli_ve", ("s", "i", B64, "", "premise", "entailment")),
    "label 'yes'": ("snli_ve", ("s", "i", B64, "h", "p", "yes")),
    "expected 'conf|!+answer'": ("vqa", ("v", "i", "q?", "red", "", B64)),
    "is not a number": ("vqa", ("v", "i", "q?", "x|!+red", "", B64)),
    "subtask 'dance'": ("pretrain", ("p", "i", "dance", "s", "t", "1", B64)),
}


def _write_raw(path, rows):
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("problem", list(BAD))
def test_bad_row_raises_with_file_and_line(tmp_path, problem):
    task, bad = BAD[problem]
    good = ROWS[task][0]
    path = tmp_path / f"{task}.tsv"
    _write_raw(path, [good, good, bad, good])
    with pytest.raises(TSVFormatError, match=problem) as err:
        list(read_tsv(path, task))
    assert err.value.line == 3 and err.value.path == str(path)
    assert f"{path}:3:" in str(err.value)


@pytest.mark.parametrize("problem", list(BAD))
def test_bad_row_skipped_counted_and_logged(tmp_path, problem, caplog):
    task, bad = BAD[problem]
    good = ROWS[task][0]
    path = tmp_path / f"{task}.tsv"
    _write_raw(path, [good, bad, good, bad])
    reader = read_tsv(path, task, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="mmprompt.data.tsv"):
        recs = list(reader)
    assert [r.line for r in recs] == [1, 3]
    assert reader.skipped == 2 and reader.rows_read == 4
    assert len(reader.problems) == 2 and reader.problems[0].startswith(f"{path}:2:")
    assert sum(reader.skip_reasons.values()) == 2
    assert "skipped 2 of 4 rows" in caplog.text


def test_not_utf8(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_bytes(b"r\ti\t\xff\xfe\t0,0,1,1\t" + B64.encode() + b"\n")
    with pytest.raises(TSVFormatError, match="UTF-8"):
        list(read_tsv(path, "refcoco"))


def test_unknown_task_and_missing_file_and_bad_options(tmp_path):
    path = tmp_path / "a.tsv"
    write_tsv(path, "refcoco", ROWS["refcoco"])
    with pytest.raises(ValueError, match="task='refcocog'.*unknown task name"):
        read_tsv(path, "refcocog")
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_tsv(tmp_path / "missing.tsv", "refcoco")
    with pytest.raises(FileNotFoundError):
        count_rows(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="on_error"):
        read_tsv(path, "refcoco", on_error="ignore")
    with pytest.raises(ValueError, match="images"):
        read_tsv(path, "refcoco", images="lazy")


def test_header_mode_and_random_access(tmp_path):
    path = tmp_path / "r.tsv"
    write_tsv(path, "refcoco", ROWS["refcoco"])
    reader = TSVReader(path, "refcoco", images="header")
    offsets = [(off, rec.line) for off, rec in reader.scan()]
    assert offsets[0][0] == 0 and offsets[1][0] > 0
    rec = reader.read_at(*offsets[1])
    assert rec.uniq_id == "r2" and rec.image.size == (40, 30)
    none = list(TSVReader(path, "refcoco", images="none"))
    assert none[0].image is None and none[0].box == (1.0, 2.0, 30.0, 25.0)


def test_truncated_image_detected_in_full_mode(tmp_path):
    buf = io.BytesIO()
    _img(64, 64, (1, 2, 3)).save(buf, "PNG")
    cut = base64.urlsafe_b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()
    path = tmp_path / "c.tsv"
    _write_raw(path, [("c", "i", "a cap", "", cut)])
    with pytest.raises(TSVFormatError, match="corrupt base64 image"):
        list(read_tsv(path, "caption"))


def test_layouts_match_ofa_column_orders():
    assert LAYOUTS["refcoco"].index("image") == 4 and LAYOUTS["refcoco"].index("text") == 2  # cols 0,4,2,3
    assert LAYOUTS["snli_ve"][2:] == ("image", "hypothesis", "caption", "label")  # cols 0,2,3,4,5
    assert LAYOUTS["caption"].index("image") == 4 and LAYOUTS["caption"].index("caption") == 2  # cols 0,4,2
    assert LAYOUTS["vqa"].index("image") == 5 and LAYOUTS["vqa"][2:5] == ("question", "answers", "predicted_objects")
