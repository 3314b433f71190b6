"""What a study remembers between runs: the manifest of finished stages, and each stage's identity
(a hash of the settings it reads and of the identities of the stages it reads from)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdeval.data.source import Split
from kdeval.fileio import file_sha256, read_json_or_none, write_json_atomic
from kdeval.study.settings import StudySettings


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    path: Path
    stages: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        raw = read_json_or_none(path) or {}
        return cls(path, dict(raw.get("stages", {})))

    def finished(self, name: str, key: str) -> dict | None:
        record = self.stages.get(name)
        if record and record.get("key") == key and record.get("state") == "finished":
            outputs = record.get("outputs", {})
            if all((self.path.parent / p).exists() for p in _paths(outputs)):
                return outputs
        return None

    def started_with(self, name: str) -> str | None:
        record = self.stages.get(name) or {}
        return record.get("key") if record.get("state") == "started" else None

    def record(self, name: str, **entry) -> None:
        self.stages[name] = entry
        write_json_atomic(self.path, {"format": "kdeval-study-manifest", "stages": self.stages})


def _paths(outputs) -> list[str]:
    if isinstance(outputs, str):
        return [outputs]
    if isinstance(outputs, dict):
        return [p for v in outputs.values() for p in _paths(v)]
    if isinstance(outputs, list):
        return [p for v in outputs for p in _paths(v)]
    return []


# what each stage reads: settings fields, and the stages whose outputs it uses
_TRAINING = ("seed", "image_size", "batch_size", "fpn_channels")
# the intervals evaluate and errors report: counted always, so that a study made before they existed
# reruns those two stages (from cached detections) and shows them
_INTERVALS = ("bootstrap", "confidence", "bootstrap_seed")
STAGE_INPUTS = {
    "data": (("data", "images", "annotations", "val_images", "val_annotations", "quick"), ()),
    "teacher": (("teacher", "teacher_arch", "teacher_epochs", *_TRAINING), ("data",)),
    "baseline": (("baseline", "student_arch", "student_epochs", *_TRAINING), ("data",)),
    "distilled": (("distilled", "student_arch", "student_epochs", "losses", "distill_weights", *_TRAINING), ("data", "teacher")),
    "unlabeled": (("unlabeled", "student_arch", "student_epochs", "pseudo_threshold", *_TRAINING), ("data", "teacher")),
    "evaluate": (_INTERVALS, ("data", "teacher", "baseline", "distilled", "unlabeled")),
    "errors": (_INTERVALS, ("data", "teacher", "baseline", "distilled")),
    "robustness": (("robustness_images", "corruptions", "severities", "seed", *_INTERVALS), ("data", "teacher", "baseline", "distilled")),
    "visualize": (("visualize_images", "seed"), ("data", "teacher", "baseline", "distilled")),
    "report": ((), ("evaluate", "errors", "robustness", "visualize")),
}


def checkpoint_identity(path: str | None) -> str | None:
    return file_sha256(Path(path)) if path and Path(path).is_file() else path


# settings added after studies existed: a stage that reads one counts it only when it differs from its
# default, so that a study made before keeps its stages' identities
LATER_SETTINGS = {"amp": ("evaluate", "errors", "robustness", "visualize"),
                  "seeds": ("teacher", "baseline", "distilled", "unlabeled")}


def stage_key(name: str, settings: StudySettings, keys: dict[str, str]) -> str:
    fields_read, upstream = STAGE_INPUTS[name]
    values = {f: getattr(settings, f) for f in fields_read}
    defaults = StudySettings()
    for f, readers in LATER_SETTINGS.items():
        if name in readers and getattr(settings, f) != getattr(defaults, f):
            values[f] = getattr(settings, f)
    for f in ("teacher", "baseline", "distilled"):
        if f in values:  # a given checkpoint counts by its bytes, not its path
            values[f] = checkpoint_identity(values[f])
    return digest({"stage": name, "settings": values, "upstream": [keys.get(u) for u in upstream]})


# beside a model the study trained: the identity of what trained it (training_identity)
TRAINED_WITH = "study_trained_with.json"


def training_identity(settings, train_split: Split) -> str:
    """What a trained model depends on: its resolved training settings, the training data's paths (as
    the data stage counts them), and its teacher's bytes, by role, where it has one: not the
    teacher's path, which changes with the spelling of --out, while a retrained teacher keeps it."""
    values = asdict(settings)
    teachers = {role: checkpoint_identity(values.pop(role)) for role in ("teacher", "pseudo_labels")}
    return digest({"settings": values, "annotations": str(train_split.annotations),
                    "images": str(train_split.images), "teachers": teachers})
