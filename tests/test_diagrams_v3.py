"""The concept diagrams of chapters 05–08 (dslearn.diagrams.fp8/dualpipe/mtp/grpo): each returns a
matplotlib Figure drawn from patches and text, and bad arguments raise with a message."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dslearn.diagrams.dualpipe import fb_chunk_pair  # noqa: E402
from dslearn.diagrams.fp8 import fp8_dataflow  # noqa: E402
from dslearn.diagrams.grpo import grpo_loop  # noqa: E402
from dslearn.diagrams.mtp import mtp_modules  # noqa: E402


def _texts(fig: Figure) -> str:
    ax = fig.axes[0]
    return " ".join(t.get_text() for t in ax.texts) + " " + ax.get_title()


@pytest.mark.parametrize("draw, words", [
    (fp8_dataflow, ["1×128", "128×128", "N_C = 128", "MoE gating", "14-bit"]),
    (fb_chunk_pair, ["DISPATCH (F)", "COMBINE (B)", "MLP (W)", "ATTN (F)"]),
    (lambda: mtp_modules(2), ["M_1", "M_2", "shared", "MTP depth 2", "hnorm"]),
    (grpo_loop, ["π_old", "π_ref", "std r", "r_4"]),
])
def test_each_diagram_is_a_figure_of_patches_and_text(draw, words):
    fig = draw()
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert len(ax.patches) >= 8
        text = _texts(fig)
        for w in words:
            assert w in text, f"{w!r} missing from the diagram's text"
        fig.canvas.draw()  # renders without error
    finally:
        plt.close(fig)


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="depths and T must be >= 1"):
        mtp_modules(0)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_loop(1)
