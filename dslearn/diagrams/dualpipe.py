"""Chapter 06's concept diagram: DualPipe's overlapped forward-and-backward chunk pair (after V3 §3.2.1,
Figure 4, simplified). Each chunk is attention → all-to-all dispatch → MLP → all-to-all combine; a forward
chunk of one micro-batch and a backward chunk of another are interleaved so that whenever one waits for its
communication the other computes."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from dslearn.diagrams._draw import BACKWARD, COMM, FORWARD, arrow, box, canvas

# (row, start, length, label, kind): the pair on one rank, in time units of the drawing
_PAIR = [
    ("compute", 0.0, 1.2, "ATTN (F)", "F"), ("comm", 0.0, 1.2, "COMBINE (B)", "B"),
    ("compute", 1.2, 1.2, "MLP (B)", "B"), ("comm", 1.2, 1.2, "DISPATCH (F)", "F"),
    ("compute", 2.4, 0.9, "MLP (W)", "B"), ("compute", 3.3, 1.2, "MLP (F)", "F"),
    ("comm", 2.4, 1.2, "DISPATCH (B)", "B"), ("comm", 3.6, 1.2, "COMBINE (F)", "F"),
    ("compute", 4.5, 1.2, "ATTN (B)", "B"), ("compute", 5.7, 0.9, "ATTN (W)", "B"),
    ("comm", 5.7, 0.9, "PP send/recv", "P"),
]


def fb_chunk_pair() -> Figure:
    """The F&B pair: a compute stream and a communication stream, forward (△) and backward (▲) halves."""
    fig, ax = canvas(10.5, 3.3, "DualPipe's F&B pair: one micro-batch's forward chunk beside another's backward chunk")
    x0, w = 1.4, 1.3  # drawing units per time unit
    ys = {"compute": 1.75, "comm": 0.75}
    for name, y in ys.items():
        ax.text(x0 - 0.15, y + 0.35, "computation" if name == "compute" else "communication", ha="right",
                va="center", fontsize=8)
    colors = {"F": FORWARD, "B": BACKWARD, "P": COMM}
    for row, start, length, label, kind in _PAIR:
        box(ax, x0 + start * w, ys[row], length * w - 0.06, 0.7, label + (" △" if kind == "F" else " ▲" if
            kind == "B" else ""), colors[kind], 7.5)
    arrow(ax, (x0, 0.45), (x0 + 6.7 * w, 0.45), "time", color="0.4")
    ax.legend(handles=[Patch(fc=FORWARD, ec="0.25", label="forward chunk, micro-batch i (△)"),
                       Patch(fc=BACKWARD, ec="0.25", label="backward chunk (B and W), micro-batch j (▲)"),
                       Patch(fc=COMM, ec="0.25", label="pipeline transfer")],
              loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=3, fontsize=7.5, frameon=False)
    ax.text(x0 + 3.3 * w, 2.75, "each all-to-all runs while the other chunk computes; in V3 a share of each GPU's SMs "
            "drives the communication (not modelled here)", ha="center", fontsize=7, color="0.3")
    return fig
