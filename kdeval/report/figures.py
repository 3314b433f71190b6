"""Saving figures: PNG and PDF side by side, each written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from kdeval.fileio import write_bytes_atomic

FIGURE_FORMATS = ("png", "pdf")


def save_figure(figure: Figure, out_dir: Path, stem: str, dpi: int = 150) -> list[Path]:
    """`stem`.png and `stem`.pdf under out_dir. Figures are built with matplotlib.figure.Figure, not
    pyplot, so nothing global needs closing."""
    paths = []
    engine = figure.get_layout_engine()
    try:
        for fmt in FIGURE_FORMATS:
            buffer = io.BytesIO()
            figure.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if fmt == "pdf" else None)
            paths.append(write_bytes_atomic(Path(out_dir) / f"{stem}.{fmt}", buffer.getvalue()))
            if engine is not None:
                # the layout the first format solved places the axes of the others too: solving it
                # again would measure every label once more, and the formats share one layout
                figure.set_layout_engine("none")
    finally:
        if engine is not None:
            figure.set_layout_engine(engine)
    return paths
