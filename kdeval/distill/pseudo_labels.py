"""Hard output distillation: the teacher's confident detections become the student's only labels."""

from __future__ import annotations

import copy


def pseudo_label_coco(coco: dict, teacher_detections: list[dict], threshold: float = 0.3) -> dict:
    """A copy of `coco` whose annotations are the detections with score > threshold (ground truth dropped)."""
    labelled = copy.deepcopy({key: value for key, value in coco.items() if key != "annotations"})
    labelled["annotations"] = [
        {
            "id": i + 1,
            "image_id": det["image_id"],
            "category_id": det["category_id"],
            "bbox": list(det["bbox"]),
            "area": det["bbox"][2] * det["bbox"][3],
            "iscrowd": 0,
            "score": det["score"],
        }
        for i, det in enumerate(d for d in teacher_detections if d["score"] > threshold)
    ]
    return labelled
