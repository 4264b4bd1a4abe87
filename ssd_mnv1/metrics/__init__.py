"""Metrics: ST's own AP (2.0 and 2025 variants), COCO metrics via pycocotools, PR-curve plots."""

from .agreement import Agreement, detection_agreement
from .coco import coco_metrics
from .plots import save_pr_curve
from .st_ap import NMS_BACKENDS, VARIANTS, STAPEvaluator, STAPResult, average_precision, st_detections

__all__ = ["Agreement", "NMS_BACKENDS", "STAPEvaluator", "STAPResult", "VARIANTS", "average_precision",
           "coco_metrics", "detection_agreement", "save_pr_curve", "st_detections"]
