"""kdeval: knowledge-distilled RetinaNet detectors, trained and evaluated table by table."""

__version__ = "0.1.0"
