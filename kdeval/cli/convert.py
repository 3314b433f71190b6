"""`kdeval convert`: an mmdetection or torchvision RetinaNet written as a kdeval checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdeval.cli.common import app, user_errors


@app.command(short_help="Write an mmdetection or torchvision RetinaNet as a kdeval checkpoint.")
@user_errors
def convert(
    source: Annotated[Path, typer.Argument(help="An mmdetection RetinaNet checkpoint (.pth), torchvision's COCO RetinaNet weights or a kdeval checkpoint.")],
    out: Annotated[Path, typer.Argument(help="The kdeval checkpoint to write.")],
):
    """Convert a model kdeval reads into a kdeval checkpoint (its network settings kept).

    \b
    Examples:
      kdeval convert retinanet_r50_fpn_1x_coco.pth teacher-r50.pt
      kdeval train --teacher teacher-r50.pt --distill ssim --arch r18 --fpn-channels 256
    """
    from kdeval.models.checkpoint import convert_checkpoint

    loaded = convert_checkpoint(source, out)
    typer.echo(f"wrote {out}: {loaded.source} RetinaNet {loaded.spec.arch}, {loaded.spec.num_classes} classes, "
               f"{loaded.spec.style} arithmetic")
