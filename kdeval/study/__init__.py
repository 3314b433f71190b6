"""`kdeval study`: the appendix's whole study as one resumable pipeline of stages.

    data → teacher → baseline → distilled (one per loss) → unlabeled (hard output distillation with
    ℓ2 and SSIM) → evaluate → errors → robustness → visualize → report

Each stage's identity is a hash of the settings it reads and of the identities of the stages it
reads from. The manifest (run folder/manifest.json, written atomically) records, per stage, the
identity it finished with. A rerun skips a stage whose identity is unchanged and whose outputs are
still there; a stage killed part-way resumes (training continues from its last saved state); a
changed setting reruns that stage and everything downstream of it, nothing else.

With several training seeds (--seeds) every model is trained once per seed, the students of a seed
distilled from that seed's teacher; evaluate and errors show each model as the mean over its runs,
with bootstrap intervals over the images, and robustness and visualize show the first seed's models.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from kdeval.errors import KdevalError
from kdeval.fileio import write_text_atomic
from kdeval.study.identity import STAGE_INPUTS, Manifest, digest, stage_key
from kdeval.study.settings import DEFAULT_DISTILL_WEIGHTS, StudySettings, quick_changes, quick_settings, study_settings
from kdeval.study.stages import STAGE_FUNCTIONS, STAGES, StudyContext, remember_models, stage_data

__all__ = ["DEFAULT_DISTILL_WEIGHTS", "STAGES", "STAGE_FUNCTIONS", "STAGE_INPUTS", "StudyResult", "StudySettings", "digest",
           "quick_changes", "quick_settings", "run_study", "stage_key", "study_settings", "study_summary"]


@dataclass
class StudyResult:
    out: Path
    ran: list[str]
    skipped: list[str]
    seconds: dict[str, float]


def run_study(settings: StudySettings, out: Path, device: str = "cpu", progress: bool = True,
              echo: Callable[[str], None] = print, stop_before: str | None = None) -> StudyResult:
    """Run (or continue) the study in `out`. `stop_before` ends it before that stage (tests use it)."""
    from kdeval.engine.distributed import Distributed

    if Distributed.from_env().world > 1:
        raise KdevalError("kdeval study runs in one process; under torchrun, run its steps instead "
                          "(torchrun ... -m kdeval train|evaluate|errors|visualize|robustness)")
    if settings.quick:
        changes = quick_changes(settings)
        if changes:
            echo(changes)
        settings = quick_settings(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "study_settings.json", json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n")
    manifest = Manifest.load(out / "manifest.json")
    ctx = StudyContext(settings, out, device, progress, echo=echo)
    keys: dict[str, str] = {}
    ran, skipped, seconds = [], [], {}
    stages = [s for s in STAGES if s in STAGE_FUNCTIONS]
    for index, name in enumerate(stages, 1):
        if name == stop_before:
            break
        key = stage_key(name, settings, keys)
        keys[name] = key
        label = f"[{index}/{len(stages)}] {name}"
        outputs = manifest.finished(name, key)
        if name == "data":  # cheap and needed by every later stage: always resolved
            outputs = stage_data(ctx, False)
            manifest.record(name, key=key, state="finished", outputs=outputs)
            echo(f"{label}: {ctx.train_split.name} ({ctx.train_split.annotations.parent.parent}), {ctx.val_split.name}")
        elif outputs is not None:
            echo(f"{label}: done earlier, kept")
            skipped.append(name)
        else:
            resume = manifest.started_with(name) == key
            echo(f"{label}: {'resuming' if resume else 'running'}")
            manifest.record(name, key=key, state="started")
            start = time.perf_counter()
            outputs = STAGE_FUNCTIONS[name](ctx, resume)
            seconds[name] = time.perf_counter() - start
            manifest.record(name, key=key, state="finished", outputs=outputs, seconds=round(seconds[name], 1))
            echo(f"{label}: finished in {_duration(seconds[name])}")
            ran.append(name)
        remember_models(ctx, name, outputs)
    return StudyResult(out, ran, skipped, seconds)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def study_summary(out: Path) -> str:
    """The tables a finished study prints, and where its report is."""
    out = Path(out)
    parts = []
    evaluated = (out / "evaluate" / "ap_table.md").is_file()
    unlabeled_hint = ("not run: `kdeval study --unlabeled` adds it (two more students, trained on the teacher's "
                      "detections with an l2 and an SSIM feature loss)")
    for title, path, when_missing in (("Table 1: feature distillation (COCO AP)", out / "evaluate" / "ap_table.md", None),
                                      ("Table 2: without annotations", out / "evaluate" / "table2_unlabeled.md", unlabeled_hint),
                                      ("Table 3: robustness", out / "robustness" / "robustness_summary.md", None)):
        if path.is_file():
            parts += [title, path.read_text(encoding="utf-8").rstrip(), ""]
        elif when_missing and evaluated:
            parts += [title, when_missing, ""]
    report = out / "index.html"
    parts.append(f"report: {report.resolve()}" if report.is_file() else f"results in {out.resolve()}/")
    return "\n".join(parts)
