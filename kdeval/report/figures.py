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
    for fmt in FIGURE_FORMATS:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(write_bytes_atomic(Path(out_dir) / f"{stem}.{fmt}", buffer.getvalue()))
    return paths
