"""Shared vocabulary, defined once: metric names, COCO area ranges, roles, corruptions."""

# COCOeval.stats, in its order (maxDets 100 for all AP entries).
COCO_STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
# The six columns of the paper's tables.
TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

# COCO object sizes by annotation area, in pixels²: small < 32², medium 32²–96², large > 96².
SMALL_MAX_AREA = 32**2
LARGE_MIN_AREA = 96**2
AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, float(SMALL_MAX_AREA)),
    "medium": (float(SMALL_MAX_AREA), float(LARGE_MIN_AREA)),
    "large": (float(LARGE_MIN_AREA), 1e10),
}

ROLES = ("teacher", "baseline", "distilled")

# Choices of models and training, named once for the library and the command line.
ARCHS = ("r18", "r34", "r50", "r101")
NORMS = ("bn", "gn", "frozen-bn")
HEAD_NORMS = ("none", "gn")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("step", "cosine")
RECIPES = ("shapes", "coco-1x")
DISTILL_LOSSES = ("ssim", "ms-ssim", "l1+ms-ssim", "smooth-l1", "l2")
# λ per feature loss: SSIM's 20 is where the Shapes λ sweep levels off (3, 6, 10, 20, 40 on the tuning
# set, benchmarks/RESULTS.md); the others give each loss the initial pull of SSIM at λ = 1, untuned
DEFAULT_DISTILL_WEIGHTS = {"ssim": 20.0, "ms-ssim": 1.2, "l1+ms-ssim": 1.3, "smooth-l1": 0.049, "l2": 0.00038}
SSIM_WINDOW_SHAPES = ("uniform", "gaussian")
SSIM_RESCALES = ("channel", "sample", "batch", "none")

BENCHMARK_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
# Severity 0 is the clean image; 1–5 are the corrupted ones. Clean scores sit in tables under this name.
CLEAN = "clean"
SEVERITIES = (1, 2, 3, 4, 5)
# The paper's robustness table (appendix Table 3): clean AP, mean AP under corruption, their ratio.
ROBUSTNESS_COLUMNS = ("AP", "mPC", "rPC")
# A tidy robustness table: one row per (model, corruption, severity, metric), values 0–1.
ROBUSTNESS_TIDY_COLUMNS = ("model", "corruption", "severity", "metric", "value")

# Box formats a results file may use; COCO results are xywh.
BOX_FORMATS = ("xywh", "xyxy")

ANALYSIS_SETTINGS = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")

# What a detection is, for the qualitative figures: matched greedily by score to ground truth of
# its class at IoU >= MATCH_IOU, as COCOeval matches at AP50; a wrong one named as TIDE names its
# error types (IoU >= BACKGROUND_IOU counts as touching an object). "crowd" lies in a crowd region
# of its class, which COCO neither credits nor counts against the model.
MATCH_IOU = 0.5
BACKGROUND_IOU = 0.1
DETECTION_VERDICTS = ("correct", "crowd", "class", "localisation", "both", "duplicate", "background")
WRONG_VERDICTS = ("class", "localisation", "both", "duplicate", "background")

# How `kdeval visualize` picks the images of its gallery (or explicit image ids).
GALLERY_SELECTIONS = ("improved", "degraded", "large", "small", "disagreement", "random")
# Where a gallery's score slider starts, and which detections its selection counts. At 0.3,
# mmdetection's display default, a RetinaNet trained for minutes puts a second, wrong-class box on
# many objects: focal loss lets the other classes' scores linger near 0.3 long after the right class
# leads (benchmarks/RESULTS.md measures it on a tuning set). 0.5, Detectron2's demo default, shows
# the confident detections; the slider still reaches down to --min-score.
GALLERY_SCORE_THRESHOLD = 0.5
