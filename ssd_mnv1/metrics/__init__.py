"""Metrics: ST's own AP (2.0 and 2025 variants), COCO metrics via pycocotools, PR-curve plots."""

from .agreement import Agreement, detection_agreement
from .coco import coco_metrics
from .plots import save_pr_curve
from .st_ap import VARIANTS, STAPEvaluator, STAPResult, average_precision

__all__ = ["Agreement", "STAPEvaluator", "STAPResult", "VARIANTS", "average_precision", "coco_metrics",
           "detection_agreement", "save_pr_curve"]
