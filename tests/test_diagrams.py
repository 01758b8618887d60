"""Each chapter's concept diagram draws: a matplotlib Figure with patches (boxes, arrows, bars) and text."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dslearn.diagrams import baseline, mla, moe, scaling  # noqa: E402

DIAGRAMS = [baseline.decoder_block, scaling.isoflop_frontier, mla.latent_path, moe.deepseekmoe_layer, moe.v3_gate]


@pytest.mark.parametrize("draw", DIAGRAMS, ids=lambda f: f"{f.__module__.rsplit('.', 1)[-1]}.{f.__name__}")
def test_diagram_has_patches_and_text(draw):
    fig = draw()
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert len(ax.patches) >= 3, "a diagram is drawn from patches"
        texts = [t.get_text() for t in ax.texts] + [ax.get_title()]
        assert sum(bool(t.strip()) for t in texts) >= 2, "a diagram labels what it shows"
        fig.canvas.draw()  # renders without error (mathtext, unicode)
    finally:
        plt.close(fig)
