import itertools

import pytest

from mmprompt.data.boxes import (
    bins_to_box,
    box_to_bins,
    box_to_tokens,
    dequantize,
    iou,
    quantize,
    scale_box,
    tokens_to_box,
)


@pytest.mark.parametrize("num_bins,size", [(64, 128), (1000, 512), (64, (96, 160)), (16, 37)])
def test_round_trip_error_at_most_half_a_bin(num_bins, size):
    w, h = (size, size) if isinstance(size, int) else size
    worst = 0.0
    for x0, y0 in itertools.product(range(0, w - 1, 3), range(0, h - 1, 5)):
        box = [x0 + 0.3, y0, min(w, x0 + 17.7), min(h, y0 + 9.2)]
        back = bins_to_box(box_to_bins(box, size, num_bins), size, num_bins)
        for k, (a, b) in enumerate(zip(box, back)):
            side = w if k % 2 == 0 else h
            err = abs(a - b) / (side / (num_bins - 1))
            worst = max(worst, err)
    assert worst <= 0.5 + 1e-9
    assert worst > 0.2  # the bound is tight enough to be meaningful


def test_quantize_formula_and_edges():
    assert quantize(0, 128, 64) == 0
    assert quantize(128, 128, 64) == 63
    assert quantize(64, 128, 64) == 32  # 31.5 rounds half up
    assert quantize(-5, 128, 64) == 0 and quantize(500, 128, 64) == 63
    assert dequantize(63, 128, 64) == 128.0
    assert box_to_bins([10, 20, 30, 40], 100, 11) == [1, 2, 3, 4]


def test_tokens_round_trip():
    text = box_to_tokens([10, 20, 30, 40], 100, 11)
    assert text == "<bin_1> <bin_2> <bin_3> <bin_4>"
    assert tokens_to_box(text, 100, 11) == [10.0, 20.0, 30.0, 40.0]
    assert tokens_to_box("<bin_1> <bin_2>", 100, 11) is None


def test_scale_and_iou():
    assert scale_box([10, 20, 30, 40], (100, 200), 50) == [5.0, 5.0, 15.0, 10.0]
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


@pytest.mark.parametrize("bad", [1, 0, 2.5])
def test_bad_num_bins(bad):
    with pytest.raises(ValueError, match="num_bins"):
        box_to_bins([0, 0, 1, 1], 10, bad)


def test_bad_box_and_size():
    with pytest.raises(ValueError, match="box"):
        box_to_bins([0, 0, 1], 10, 8)
    with pytest.raises(ValueError, match="image_size"):
        box_to_bins([0, 0, 1, 1], 0, 8)
