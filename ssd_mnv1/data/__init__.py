"""Datasets: COCO json and ST's YOLO-Darknet layout (readers), and the COCO -> person set builder."""

from .datasets import (
    DetectionDataset,
    Record,
    image_size,
    open_dataset,
    read_coco,
    read_yolo,
)

__all__ = ["DetectionDataset", "Record", "image_size", "open_dataset", "read_coco",
           "read_yolo"]
