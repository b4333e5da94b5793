import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from mmprompt.data.preprocess import preprocess_image  # noqa: E402
from mmprompt.workbook.viz import GOLD_COLOR, PRED_COLOR, draw_example, draw_grid  # noqa: E402


def test_draw_example_gold_and_predicted_boxes():
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    ax = draw_example(img, boxes=[[1, 2, 30, 40], [40, 40, 60, 60]], texts=["the red square", "-> pred"],
                      pred_boxes=[3, 4, 28, 38], labels=["a", "b"], title="t")  # fmt: skip
    rects = ax.patches
    assert len(rects) == 3
    gold = [r for r in rects if matplotlib.colors.to_hex(r.get_edgecolor()) == GOLD_COLOR]
    pred = [r for r in rects if matplotlib.colors.to_hex(r.get_edgecolor()) == PRED_COLOR]
    assert len(gold) == 2 and len(pred) == 1 and pred[0].get_linestyle() == "--"
    assert (gold[0].get_x(), gold[0].get_y(), gold[0].get_width(), gold[0].get_height()) == (1, 2, 29, 38)
    assert "the red square" in ax.get_xlabel() and ax.get_title() == "t"
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    plt.close("all")


def test_draw_example_accepts_normalised_tensor_and_arrays():
    t = preprocess_image(Image.new("RGB", (32, 32), (0, 255, 0)), 16)
    ax = draw_example(t)
    shown = ax.images[0].get_array()
    assert shown.shape == (16, 16, 3) and tuple(shown[0, 0]) == (0, 255, 0)
    draw_example(np.zeros((8, 8, 3), dtype=np.uint8), boxes=None)
    with pytest.raises(ValueError, match="boxes"):
        draw_example(t, boxes=[1, 2, 3])
    fig = draw_grid([{"image": t}, {"image": t, "texts": "x"}, {"image": t}], ncols=2)
    assert len(fig.axes) == 4
    plt.close("all")


def test_grid_captions_do_not_overlap_neighbours_or_the_row_below():
    """02's example grid: long captions under 2.6-inch columns stay inside their column and above the next row."""
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    long = ["hypothesis: the small green triangle is to the left of the large blue circle near the edge",
            "gold: yes | pred: maybe"]
    fig = draw_grid([{"image": img, "texts": long, "title": "snli_ve"} for _ in range(6)], ncols=3, size=2.6)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    labels = [ax.xaxis.label.get_window_extent(renderer) for ax in axes]
    for a, b in zip(labels, labels[1:]):
        if abs(a.y0 - b.y0) < 1:  # same row: side by side, no overlap
            assert b.x0 - a.x1 >= 0.1 * fig.dpi, (a, b)  # at least a tenth of an inch between captions
    for k in range(3):  # a caption of row 0 ends above the title of the image below it
        below = axes[k + 3].title.get_window_extent(renderer)
        assert labels[k].y0 > below.y1, (labels[k], below)
    plt.close(fig)
