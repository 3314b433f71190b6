"""kdeval: knowledge-distilled RetinaNet detectors, trained and evaluated table by table.

The data flows through the packages in this order:

  data/      COCO-format loading and checking, the Shapes generator, corrupted views of images
  models/    RetinaNet by arch, the checkpoint format, torchvision weights
  distill/   feature losses between student and teacher, pseudo-labels
  engine/    runs models and sequences work: train, predict, and detections.py, the one place where
             every model argument (checkpoint, torchvision weights, results JSON) becomes COCO
             detections, cached, sharded under torchrun and gathered to rank 0; robustness/ runs
             models over corrupted images scenario by scenario
  metrics/   pure scores of one model's detections: COCO AP, COCO-analyze curves, TIDE, mPC/rPC
  analysis/  a command's result over every model: (ground truth, detections by model, settings) →
             tables and dataclasses
  report/    tables as CSV/Markdown/LaTeX, figures as PNG/PDF, HTML pages, written from results
  study/     the appendix's whole study as resumable stages; cli/ parses and delegates
"""

__version__ = "0.1.0"
