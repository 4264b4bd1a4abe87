"""How precisely a dataset measures ST-AP: bootstrap intervals over images, paired for differences.

An ST-AP on 690 images moves by a few tenths when a handful of detections change, so "int8 costs
0.2" needs an error bar. Resampling images with replacement keeps every detection's TP flag (a
detection only matches GT of its own image), so a resample's AP is the all-point AP of the same
ranked detections weighted by how often their image was drawn. Two models scored on the same
images share each resample (paired bootstrap): their difference is far more precise than either AP.

:func:`ssd_mnv1.evaluation.paired_st_ap` runs the whole comparison on model files
(``bench/paired_ap.py`` prints it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .st_ap import RankedMatches, STAPResult

#: Resamples per interval. On the 690 val images, five seeds move the ends of a paired difference's
#: 95 % interval by <= 0.05 ST-AP, those of one model's (7 points wide) by up to 0.23.
BOOTSTRAP_SAMPLES = 2000


def image_weights(num_images: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """(samples, num_images): how many times each image is drawn in each resample (multinomial)."""
    if num_images < 1 or samples < 1:
        raise ValueError(f"need at least one image and one resample, got {num_images} and {samples}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=samples).astype(np.float64)


def weighted_ap(matches: RankedMatches, weights: np.ndarray) -> np.ndarray:
    """All-point AP of one class for each row of ``weights`` (resamples x images); NaN where the
    resample has no GT of the class. Weight 1 everywhere gives the evaluator's AP.

    Only the true positives are visited: recall rises there, and precision, which falls at every
    false positive, peaks there, so the all-point envelope is a running maximum over them. The
    detections ranked up to each true positive are counted per image once (``ranked``), and a
    resample's count is then one matrix product.
    """
    weights = np.atleast_2d(weights).astype(np.float64)
    hits = np.flatnonzero(matches.tp > 0)
    if hits.size == 0:  # AP 0, or nothing to average without GT
        return np.where(weights @ matches.gt_counts > 0, 0.0, np.nan)
    # ranked[k, i]: detections of image i ranked at or above the k-th true positive
    ranks = np.arange(hits[-1] + 1)  # detections below the last true positive play no part
    ranked = np.zeros((hits.size, weights.shape[1]))
    np.add.at(ranked, (np.searchsorted(hits, ranks), matches.image_index[ranks]), 1.0)
    ranked = np.cumsum(ranked, axis=0)
    gain = weights[:, matches.image_index[hits]]                   # (B, T): each TP's recall step
    precision = np.cumsum(gain, axis=1) / np.maximum(weights @ ranked.T, 1e-300)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (gain * envelope).sum(axis=1) / (weights @ matches.gt_counts)


def resampled_ap(result: STAPResult, weights: np.ndarray) -> np.ndarray:
    """ST-AP (0..1) of ``result`` under each row of ``weights``: the mean over its classes, as
    :class:`~.st_ap.STAPEvaluator` averages them (classes without GT in a resample left out)."""
    if weights.shape[-1] != len(result.image_ids):
        raise ValueError(f"{weights.shape[-1]} image weights for a result over {len(result.image_ids)} images")
    if not result.matches:
        return np.zeros(len(np.atleast_2d(weights)))
    per_class = np.stack([weighted_ap(m, weights) for m in result.matches.values()])
    with np.errstate(invalid="ignore"):
        return np.nanmean(per_class, axis=0)


@dataclass
class Interval:
    """A point estimate with its percentile bootstrap interval, in ST-AP points (percent)."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def _interval(point: float, values: np.ndarray, confidence: float) -> Interval:
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return Interval(round(100.0 * point, 4), round(100.0 * float(low), 4), round(100.0 * float(high), 4))


@dataclass
class BootstrapComparison:
    """Several models scored on the same images, each ST-AP recomputed on the same ``samples``
    resamples of the images (``resampled``: models x samples, 0..1)."""

    points: list[float]
    resampled: np.ndarray
    confidence: float

    def interval(self, i: int) -> Interval:
        """Model ``i``'s ST-AP with its interval."""
        return _interval(self.points[i], self.resampled[i], self.confidence)

    def difference(self, i: int, j: int) -> Interval:
        """ST-AP of model ``i`` minus model ``j``, with its paired interval."""
        return _interval(self.points[i] - self.points[j], self.resampled[i] - self.resampled[j], self.confidence)


def bootstrap_comparison(results: list[STAPResult], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                         confidence: float = 0.95) -> BootstrapComparison:
    """Resample the images once and rescore every result on each resample; all must have scored
    the same images (same ids: one dataset and ``limit``)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not results:
        raise ValueError("bootstrap_comparison needs at least one result")
    for r in results[1:]:
        if not np.array_equal(r.image_ids, results[0].image_ids):
            raise ValueError(f"the results scored different images ({len(results[0].image_ids)} and "
                             f"{len(r.image_ids)}): evaluate all on the same dataset and limit")
    weights = image_weights(len(results[0].image_ids), samples, seed)
    return BootstrapComparison([r.ap for r in results], np.stack([resampled_ap(r, weights) for r in results]),
                               confidence)
