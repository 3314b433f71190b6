"""A study's settings: every option, a --config file's and the command line's, and what --quick changes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from kdeval.errors import KdevalError
from kdeval.vocab import ARCHS, DEFAULT_DISTILL_WEIGHTS, DISTILL_LOSSES, SEVERITIES


@dataclass(frozen=True)
class StudySettings:
    """Every option of a study; a --config file (YAML or TOML) may set any of them."""

    data: str = "shapes"
    images: str | None = None  # training images and annotations (a COCO dataset of one's own)
    annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    teacher_arch: str = "r34"
    student_arch: str = "r18"
    # the teacher gets most of a CPU's 20 minutes; students stay short, where distillation's help shows
    # most (benchmarks/RESULTS.md: the levers and what each bought)
    teacher_epochs: int = 10
    student_epochs: int = 3
    losses: tuple[str, ...] = ("ssim",)
    distill_weights: tuple[float, ...] = ()  # one per loss; empty: DEFAULT_DISTILL_WEIGHTS
    unlabeled: bool = False
    pseudo_threshold: float = 0.3
    teacher: str | None = None  # existing checkpoints skip their training
    baseline: str | None = None
    distilled: str | None = None
    seed: int = 0
    # training seeds: every model trained once per seed, the students of a seed distilled from that
    # seed's teacher; evaluate and errors show the mean over them (robustness and visualize, the first
    # seed's models); empty: the one `seed`
    seeds: tuple[int, ...] = ()
    image_size: int | None = None  # training and inference size (default: the recipe's, 128 on Shapes)
    batch_size: int | None = None
    fpn_channels: int | None = None
    robustness_images: int = 24
    corruptions: str = "benchmark"
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    visualize_images: int = 6
    quick: bool = False
    device: str = "auto"
    amp: bool = True  # fp16 inference on CUDA (evaluate, errors, robustness, visualize); False (--fp32): fp32
    bootstrap: int = 1000  # image resamples for the intervals of evaluate, errors and robustness; 0: none
    confidence: float = 0.95
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        self._check_ranges()
        unknown = [loss for loss in self.losses if loss not in DISTILL_LOSSES]
        if unknown:
            raise KdevalError(f"losses: unknown {unknown[0]!r} (expected some of {', '.join(DISTILL_LOSSES)})")
        if len(set(self.losses)) != len(self.losses):
            twice = next(loss for loss in self.losses if self.losses.count(loss) > 1)
            raise KdevalError(f"losses: {twice!r} is given twice")
        if self.distill_weights and len(self.distill_weights) != len(self.losses):
            raise KdevalError(f"distill_weights: {len(self.distill_weights)} weights for {len(self.losses)} losses")
        if len(set(self.seeds)) != len(self.seeds):
            twice = next(seed for seed in self.seeds if self.seeds.count(seed) > 1)
            raise KdevalError(f"seeds: {twice} is given twice")
        if self.distilled is not None and len(self.losses) != 1:
            raise KdevalError("--distilled takes the checkpoint of one distilled student: give exactly one loss with it")

    def _check_ranges(self) -> None:
        """Values the command line bounds (typer's min=…) but a config file could set to anything."""
        from kdeval.data.corrupted import parse_corruptions

        for name, low in (("teacher_epochs", 1), ("student_epochs", 1), ("robustness_images", 1), ("visualize_images", 1),
                          ("image_size", 32), ("batch_size", 1), ("fpn_channels", 8)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise KdevalError(f"{name}: {value} is below {low}")
        for name in ("teacher_arch", "student_arch"):
            if getattr(self, name) not in ARCHS:
                raise KdevalError(f"{name}: unknown {getattr(self, name)!r} (expected one of {', '.join(ARCHS)})")
        if not self.severities or not set(self.severities) <= set(SEVERITIES):
            raise KdevalError(f"severities: {list(self.severities)} (expected some of {SEVERITIES[0]} to {SEVERITIES[-1]})")
        if not (0.0 <= self.pseudo_threshold <= 1.0):  # NaN fails too
            raise KdevalError(f"pseudo_threshold: {self.pseudo_threshold} (expected a score from 0 to 1)")
        if any(not (0.0 <= weight < float("inf")) for weight in self.distill_weights):
            raise KdevalError(f"distill_weights: {list(self.distill_weights)} (expected finite weights ≥ 0)")
        if not self.losses:
            raise KdevalError("losses: give at least one feature loss")
        if self.bootstrap < 0:
            raise KdevalError(f"bootstrap: {self.bootstrap} (expected 0, no intervals, or a number of image resamples)")
        if not (0.0 < self.confidence < 1.0):  # NaN fails too
            raise KdevalError(f"confidence: {self.confidence} (expected a level strictly between 0 and 1, e.g. 0.95)")
        parse_corruptions(self.corruptions)

    @property
    def training_seeds(self) -> tuple[int, ...]:
        """The seeds every model is trained with, the first one's models in robustness and visualize."""
        return self.seeds or (self.seed,)

    def bootstrap_settings(self):
        from kdeval.metrics.bootstrap import BootstrapSettings

        return BootstrapSettings(self.bootstrap, self.confidence, self.bootstrap_seed)

    def weight_of(self, loss: str) -> float:
        if self.distill_weights:
            return self.distill_weights[self.losses.index(loss)]
        return DEFAULT_DISTILL_WEIGHTS[loss]


def study_settings(config: Path | None, given: dict) -> StudySettings:
    """The settings of a study: a --config file's (YAML or TOML), or the defaults, with the options
    `given` on the command line over them (those not None; paths as strings)."""
    from kdeval.config import read_settings_file, settings_from_mapping

    base = StudySettings()
    if config is not None:
        base = settings_from_mapping(StudySettings, read_settings_file(config), str(config))
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    return settings_from_mapping(StudySettings, given, "command line", base=base)


# --quick's ceilings. Its 5-epoch teacher scores few detections above the paper's 0.3 on Shapes' quick
# set, so hard output distillation takes those above 0.1
QUICK_CEILINGS = {"teacher_epochs": 5, "student_epochs": 3, "robustness_images": 6, "visualize_images": 3,
                  "pseudo_threshold": 0.1}


def quick_settings(settings: StudySettings) -> StudySettings:
    """--quick: the same pipeline on a small Shapes set with short schedules (tests use it)."""
    capped = {name: min(getattr(settings, name), ceiling) for name, ceiling in QUICK_CEILINGS.items()}
    return replace(settings, severities=(3,), **capped)


def quick_changes(settings: StudySettings) -> str | None:
    """What --quick changes of `settings`, as one line (None when nothing)."""
    quick = quick_settings(settings)
    changes = [f"{f.name} {_shown(getattr(settings, f.name))} → {_shown(getattr(quick, f.name))}"
               for f in fields(StudySettings) if getattr(settings, f.name) != getattr(quick, f.name)]
    return "--quick sets " + ", ".join(changes) if changes else None


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
