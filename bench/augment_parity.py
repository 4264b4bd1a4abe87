"""Augmentation parity: our training augmentation against ST's own 2.0 ``data_aug`` (imgaug 0.4.0).

    python bench/augment_parity.py --st-src /path/to/stm32ai-modelzoo [--st-python PATH]
        [--data DIR] [--size 224] [--samples 2000] [--seed 0] [--json OUT]

ST's side runs ``data_aug`` from ``--st-src`` (the model-zoo root holding
``object_detection/src/data_augmentation/data_augment.py``) in a separate Python with imgaug
(``--st-python``, default /tmp/st_aug_venv/bin/python) through ``bench/_st_augment_driver.py``;
arrays go through temporary .npz files. Our side runs ``ssd_mnv1.training`` (the
``DetectionDataModule.train_dataloader`` path that ``fit`` uses, and the same op objects alone).
Both start from the same bilinear-resized SxS uint8 images and boxes.

Two kinds of rows:

* ``op:`` each op of ST's list run alone on probe images with known boxes (ST: the op object
  that ``data_aug`` builds; ours: the op of :func:`ssd_mnv1.training.augment.build_ops`), and its
  parameter read back from what it did: flip rates from a box's side, crop fractions per side from
  a full-image box, the affine matrix from three point boxes (decomposed into scale x/y,
  translation, rotation, shear), fill value from a black image, interpolation from a checkerboard,
  photometric parameters from flat images (blur sigma from a line's spread).
* ``full:`` the whole pipeline, batches of 64 (ST: one ``data_aug`` call per batch): images dropped
  and boxes removed per batch, boxes on the border and sub-pixel boxes, box area / aspect / centre,
  pixel mean and std per image.

Tests (stated per row): two-sample KS for distributions, two-proportion z-test for rates, Welch
|diff| / SE for per-batch rates (batches are the independent unit: one op order per batch). A row
fails when p < ``FAMILY_ALPHA`` / rows (0.01 / 40, Bonferroni: a 1 % chance that a correct
implementation fails somewhere) unless it is listed in ``EXCEPTIONS`` with its reason.
The last line printed is one JSON object with every row and ``pass``; the exit code is 1 on failure.

ST venv (Python 3.11; imgaug 0.4.0 needs numpy < 1.24's aliases and ragged ``asarray``, which the
driver restores at run time, inside its own process only):

    python3 -m venv /tmp/st_aug_venv
    /tmp/st_aug_venv/bin/pip install imgaug==0.4.0 opencv-python-headless==4.11.0.86 numpy==1.26.4 \
        scipy==1.17.1 scikit-image==0.26.0 Pillow==13.0.0 shapely==2.2.0

scikit-image >= 0.21 gives imgaug's affine shear the ``tan`` (true shear) matrices that ours
reproduces; older scikit-image (< 0.21) built ``shear`` as an axis rotation, within 3.5 % of it for
|s| <= 15 degrees. The ST sources: stm32ai-modelzoo @ ff424ea597aa8b1f7b9afd5f598668b9c28470ea,
``object_detection/src/data_augmentation/data_augment.py`` (kept outside this repository).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from ssd_mnv1.data import open_dataset  # noqa: E402
from ssd_mnv1.fileio import atomic_write_text  # noqa: E402
from ssd_mnv1.training import NO_AUGMENTATION, Augmentation, DetectionDataModule, DetectionSamples  # noqa: E402
from ssd_mnv1.training import augment as A  # noqa: E402

#: Family-wise false-failure rate: a row fails when p < FAMILY_ALPHA / (number of rows) (Bonferroni).
FAMILY_ALPHA = 0.01
BATCH = 64
#: Rows allowed to fail, with the reason (and measured effect) -- empty: every row must pass.
EXCEPTIONS: dict[str, str] = {}
DRIVER = Path(__file__).with_name("_st_augment_driver.py")
DEFAULT_DATA = REPO.parent / "shared" / "data" / "coco2017_person_train"
if not DEFAULT_DATA.exists():
    DEFAULT_DATA = Path("/work/shared/data/coco2017_person_train")


# ------------------------------------------------------------------------------------- tests
def _kolmogorov_sf(lam: float) -> float:
    if lam < 0.2:
        return 1.0
    return float(min(1.0, max(0.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam)
                                          for k in range(1, 101)))))


def ks_test(a, b) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, p). scipy's when installed, else the asymptotic p."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    try:
        from scipy.stats import ks_2samp

        r = ks_2samp(a, b)
        return float(r.statistic), float(r.pvalue)
    except ImportError:
        pass
    grid = np.unique(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    d = float(np.abs(fa - fb).max())
    ne = len(a) * len(b) / (len(a) + len(b))
    return d, _kolmogorov_sf((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d)


def _has_scipy() -> bool:
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return False
    return True


def z_rate(k1, n1, k2, n2) -> tuple[float, float]:
    """Two-proportion z-test: (z, p)."""
    p = (k1 + k2) / max(n1 + n2, 1)
    se = math.sqrt(p * (1 - p) * (1 / max(n1, 1) + 1 / max(n2, 1)))
    if se == 0:
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def welch(a, b) -> tuple[float, float]:
    """|mean diff| / SE with per-unit values (normal p)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if se == 0:
        return 0.0, 1.0 if a.mean() == b.mean() else 0.0
    z = (a.mean() - b.mean()) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


class Table:
    def __init__(self):
        self.rows = []

    def dist(self, name, st, ours, fmt="{:.3f}"):
        st, ours = np.asarray(st, float), np.asarray(ours, float)
        d, p = ks_test(st, ours)
        self._add(name, f"{fmt.format(st.mean())} ±{fmt.format(st.std())} (n={len(st)})",
                  f"{fmt.format(ours.mean())} ±{fmt.format(ours.std())} (n={len(ours)})", f"KS D={d:.3f}", p)

    def rate(self, name, k1, n1, k2, n2):
        z, p = z_rate(k1, n1, k2, n2)
        self._add(name, f"{k1 / max(n1, 1):.4f} ({k1}/{n1})", f"{k2 / max(n2, 1):.4f} ({k2}/{n2})",
                  f"z={z:+.2f}", p)

    def means(self, name, st, ours, fmt="{:.4f}"):
        z, p = welch(st, ours)
        self._add(name, f"{fmt.format(np.mean(st))} (n={len(st)})", f"{fmt.format(np.mean(ours))} (n={len(ours)})",
                  f"Welch z={z:+.2f}", p)

    def _add(self, name, st, ours, test, p):
        self.rows.append({"statistic": name, "st": st, "ours": ours, "test": test,
                          "p": None if math.isnan(p) else round(p, 6)})

    def finish(self) -> float:
        """Verdicts at the Bonferroni per-row level; returns that level."""
        alpha = FAMILY_ALPHA / max(len(self.rows), 1)
        for r in self.rows:
            ok = r["p"] is not None and not r["p"] < alpha
            r["verdict"] = "pass" if ok else ("EXCEPTION" if r["statistic"] in EXCEPTIONS else "FAIL")
            if not ok and r["statistic"] in EXCEPTIONS:
                r["exception"] = EXCEPTIONS[r["statistic"]]
        return alpha

    def print(self):
        w = [max(len(str(r[k])) for r in self.rows + [dict(statistic="statistic", st="ST", ours="ours",
                                                           test="test", p="p", verdict="verdict")])
             for k in ("statistic", "st", "ours", "test")]
        head = f"{'statistic':<{w[0]}}  {'ST':<{w[1]}}  {'ours':<{w[2]}}  {'test':<{w[3]}}  {'p':>9}  verdict"
        print(head)
        print("-" * len(head))
        for r in self.rows:
            p = "nan" if r["p"] is None else f"{r['p']:.4f}"
            print(f"{r['statistic']:<{w[0]}}  {r['st']:<{w[1]}}  {r['ours']:<{w[2]}}  {r['test']:<{w[3]}}  "
                  f"{p:>9}  {r['verdict']}")
        for r in self.rows:
            if "exception" in r:
                print(f"  exception {r['statistic']}: {r['exception']}")


# ---------------------------------------------------------------------------------- ST side
class STRunner:
    def __init__(self, st_src: Path, python: str, tmp: Path):
        self.st_src, self.python, self.tmp, self.calls = st_src, python, tmp, 0

    def __call__(self, **arrays) -> dict:
        self.calls += 1
        inp, out = self.tmp / f"in{self.calls}.npz", self.tmp / f"out{self.calls}.npz"
        np.savez(inp, **arrays)
        r = subprocess.run([self.python, str(DRIVER), "--st-src", str(self.st_src), "--inp", str(inp),
                            "--out", str(out)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"ST driver failed ({self.python}):\n{r.stderr[-3000:]}")
        with np.load(out, allow_pickle=False) as z:
            res = {k: z[k] for k in z.files}
        inp.unlink()
        out.unlink()
        return res


# --------------------------------------------------------------------------------- our side
def our_op(ops, kind):
    """The op of ``build_ops`` of that kind (RandomApply wrappers included)."""
    for op in ops:
        inner = op.transforms[0] if isinstance(op, v2.RandomApply) else op
        if kind == "hflip" and isinstance(inner, A.RandomFlip) and inner.axis == "x":
            return op
        if kind == "vflip" and isinstance(inner, A.RandomFlip) and inner.axis == "y":
            return op
        for name, cls in (("crop", A.RandomCropSides), ("affine", A.RandomAffineST), ("multiply", A.RandomMultiply),
                          ("blur", A.RandomGaussianBlur), ("noise", A.RandomGaussianNoise),
                          ("contrast", A.RandomLinearContrast), ("add", A.RandomAdd)):
            if kind == name and isinstance(inner, cls):
                return op
    raise KeyError(kind)


ST_INDEX = {"hflip": 0, "vflip": 1, "crop": 2, "affine": 3, "multiply": 4, "blur": 5, "noise": 6,
            "contrast": 7, "add": 8}


def run_ours_probe(op, images, boxes):
    """images (N, H, W, 3) uint8, boxes (N, K, 4) -> same, after ``op`` alone (no clipping)."""
    out_i, out_b = [], []
    h, w = images.shape[1:3]
    for img, bx in zip(images, boxes):
        s = op({"image": tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1).contiguous()),
                "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(bx).float(), format="XYXY", canvas_size=(h, w)),
                "labels": torch.ones(len(bx), dtype=torch.long)})
        out_i.append(s["image"].as_subclass(torch.Tensor).permute(1, 2, 0).numpy())
        out_b.append(s["boxes"].as_subclass(torch.Tensor).double().numpy())
    return np.stack(out_i), np.stack(out_b)


def probe_both(st, ops, kind, images, boxes, seed):
    res = st(mode="probe", images=images, boxes=boxes, op=ST_INDEX[kind], seed=seed)
    torch.manual_seed(seed)
    ours = run_ours_probe(our_op(ops, kind), images, boxes)
    return (res["images"], res["boxes"]), ours


# ------------------------------------------------------------------------------ observables
def decompose_affine(b, size):
    """Three point boxes (centre, +d x, +d y) -> scale_x, scale_y, rotation, shear (deg), translate
    (fraction of the size), following imgaug's R @ ShearX(-tan s) @ S @ ShearY(tan s)."""
    d = size / 4.0
    p0, px, py = b[:, 0, :2], b[:, 1, :2], b[:, 2, :2]
    L = np.stack([(px - p0) / d, (py - p0) / d], axis=-1)  # columns
    t = (p0 - size / 2.0) / size
    r = np.arctan2(L[:, 1, 0] + L[:, 0, 1], L[:, 0, 0] - L[:, 1, 1])
    c, s = np.cos(-r), np.sin(-r)
    R = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    Am = R @ L
    flip = Am[:, 1, 1] < 0  # the other branch of r (mod pi)
    r = np.where(flip, r + np.pi, r)
    Am = np.where(flip[:, None, None], -Am, Am)
    r = (r + np.pi) % (2 * np.pi) - np.pi
    sy = Am[:, 1, 1]
    tan_s = Am[:, 1, 0] / sy
    sx = Am[:, 0, 0] + tan_s ** 2 * sy
    return {"scale_x": sx, "scale_y": sy, "rotation": np.degrees(r), "shear": np.degrees(np.arctan(tan_s)),
            "translate_x": t[:, 0], "translate_y": t[:, 1], "det": np.linalg.det(L),
            "identity": np.all(np.abs(L - np.eye(2)) < 1e-6, axis=(1, 2)) & np.all(np.abs(t) < 1e-9, axis=1)}


def crop_fractions(b, size):
    x1, y1, x2, y2 = b[:, 0, 0], b[:, 0, 1], b[:, 0, 2], b[:, 0, 3]
    kx, ky = (x2 - x1) / size, (y2 - y1) / size
    left, top = -x1 / kx, -y1 / ky
    right, bottom = size - left - size / kx, size - top - size / ky
    applied = (np.abs(kx - 1) > 1e-9) | (np.abs(ky - 1) > 1e-9)
    return applied, {"top": top / size, "right": right / size, "bottom": bottom / size, "left": left / size}


# ----------------------------------------------------------------------------------- probes
def op_rows(table, st, ops, size, n, seed):
    z = lambda s: np.zeros((n, s, s, 3), np.uint8)  # noqa: E731

    # flips: a box in the top-left part
    box = np.tile(np.array([[0.1, 0.2, 0.3, 0.35]]) * size, (n, 1, 1))
    for kind, axis in (("hflip", 0), ("vflip", 1)):
        (_, sb), (_, ob) = probe_both(st, ops, kind, z(size), box, seed + axis)
        table.rate(f"op: {kind} rate", int((sb[:, 0, axis] > size / 2).sum()), n,
                   int((ob[:, 0, axis] > size / 2).sum()), n)

    # crop: the full-image box gives the four crop amounts
    # (on a 1-pixel 0/255 checkerboard: the resize-back's interpolation shows in the blended pixels)
    full = np.tile(np.array([[0.0, 0.0, size, size]]), (n, 1, 1))
    yy, xx = np.mgrid[:size, :size]
    fine = np.repeat(np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[None, :, :, None], n, 0), 3, -1)
    (si, sb), (oi, ob) = probe_both(st, ops, "crop", fine, full, seed + 2)
    sa, sf = crop_fractions(sb, size)
    oa, of = crop_fractions(ob, size)
    table.rate("op: crop applied rate", int(sa.sum()), n, int(oa.sum()), n)
    for side in ("top", "right", "bottom", "left"):
        table.dist(f"op: crop fraction {side}", sf[side][sa], of[side][oa])
    blended = lambda imgs: ((imgs[..., 0] > 0) & (imgs[..., 0] < 255)).mean(axis=(1, 2))  # noqa: E731
    table.dist("op: crop resize-back blended pixels (fraction)", blended(si[sa]), blended(oi[oa]))

    # affine: three point boxes give the matrix; a black image gives the fill (cval)
    c, d = size / 2.0, size / 4.0
    pts = np.array([[c, c, c, c], [c + d, c, c + d, c], [c, c + d, c, c + d]])
    (si, sb), (oi, ob) = probe_both(st, ops, "affine", z(size), np.tile(pts, (n, 1, 1)), seed + 3)
    sd, od = decompose_affine(sb, size), decompose_affine(ob, size)
    sa, oa = ~sd["identity"], ~od["identity"]
    table.rate("op: affine applied rate", int(sa.sum()), n, int(oa.sum()), n)
    for key, fmt in (("scale_x", "{:.3f}"), ("scale_y", "{:.3f}"), ("translate_x", "{:.4f}"),
                     ("translate_y", "{:.4f}"), ("rotation", "{:.2f}"), ("shear", "{:.2f}")):
        table.dist(f"op: affine {key}", sd[key][sa], od[key][oa], fmt)
    table.dist("op: affine scale_x*scale_y (independence)", (sd["scale_x"] * sd["scale_y"])[sa],
               (od["scale_x"] * od["scale_y"])[oa])
    # fill: with the area shrunk there is a border, whose value is the per-channel max of a black image
    sm, om = sa & (sd["det"] < 0.9), oa & (od["det"] < 0.9)
    scv, ocv = si.reshape(n, -1, 3).max(1)[sm], oi.reshape(n, -1, 3).max(1)[om]
    table.dist("op: affine fill (cval) channel 0", scv[:, 0], ocv[:, 0], "{:.1f}")
    table.rate("op: affine fill equal on 3 channels", int((scv.min(1) == scv.max(1)).sum()), len(scv),
               int((ocv.min(1) == ocv.max(1)).sum()), len(ocv))
    # interpolation: a 0/255 checkerboard stays two-valued (plus the fill) with nearest
    yy, xx = np.mgrid[:size, :size]
    board = np.repeat(((((yy // 8) + (xx // 8)) % 2) * 255).astype(np.uint8)[None, :, :, None], n, 0)
    board = np.repeat(board, 3, -1)
    (si, sb), (oi, ob) = probe_both(st, ops, "affine", board, np.tile(pts, (n, 1, 1)), seed + 4)
    sa2, oa2 = ~decompose_affine(sb, size)["identity"], ~decompose_affine(ob, size)["identity"]
    nearest = lambda imgs: np.array([len(np.unique(im[..., 0])) <= 3 for im in imgs])  # noqa: E731
    table.rate("op: affine nearest-interpolation rate", int(nearest(si[sa2]).sum()), int(sa2.sum()),
               int(nearest(oi[oa2]).sum()), int(oa2.sum()))

    # photometric ops on flat 32x32 images
    s = 32
    flat = lambda v: np.full((n, s, s, 3), v, np.uint8)  # noqa: E731
    nob = np.zeros((n, 1, 4))
    nob[:, 0] = [1, 1, 2, 2]
    (si, _), (oi, _) = probe_both(st, ops, "multiply", flat(100), nob, seed + 5)
    table.dist("op: multiply (100 -> value)", si[:, 0, 0, 0], oi[:, 0, 0, 0], "{:.2f}")
    (si, _), (oi, _) = probe_both(st, ops, "contrast", flat(200), nob, seed + 6)
    table.dist("op: linear contrast (200 -> value)", si[:, 0, 0, 0], oi[:, 0, 0, 0], "{:.2f}")
    (si, _), (oi, _) = probe_both(st, ops, "contrast", flat(20), nob, seed + 7)
    table.dist("op: linear contrast (20 -> value)", si[:, 0, 0, 0], oi[:, 0, 0, 0], "{:.2f}")
    (si, _), (oi, _) = probe_both(st, ops, "add", flat(128), nob, seed + 8)
    spc = (si[:, 0, 0, :].min(1) != si[:, 0, 0, :].max(1))
    opc = (oi[:, 0, 0, :].min(1) != oi[:, 0, 0, :].max(1))
    table.rate("op: add per-channel rate", int(spc.sum()), n, int(opc.sum()), n)
    table.dist("op: add value (channel 0)", si[:, 0, 0, 0].astype(float) - 128, oi[:, 0, 0, 0].astype(float) - 128,
               "{:.2f}")
    (si, _), (oi, _) = probe_both(st, ops, "noise", flat(128), nob, seed + 9)
    table.dist("op: noise std", (si[..., 0].astype(float) - 128).reshape(n, -1).std(1),
               (oi[..., 0].astype(float) - 128).reshape(n, -1).std(1), "{:.2f}")
    grey = lambda im: np.all(im.min(-1) == im.max(-1), axis=(1, 2))  # noqa: E731
    table.rate("op: noise same on 3 channels", int(grey(si).sum()), n, int(grey(oi).sum()), n)
    line = np.zeros((n, s, s, 3), np.uint8)
    line[:, :, s // 2] = 255
    (si, _), (oi, _) = probe_both(st, ops, "blur", line, nob, seed + 10)

    def spread(imgs):
        prof = imgs[:, s // 2, :, 0].astype(float)
        x = np.arange(s) - s // 2
        return np.sqrt((prof * x ** 2).sum(1) / prof.sum(1))

    table.dist("op: blur sigma (line spread, px)", spread(si), spread(oi), "{:.3f}")
    table.dist("op: blur line peak value", si[:, s // 2, s // 2, 0], oi[:, s // 2, s // 2, 0], "{:.1f}")


# ------------------------------------------------------------------------------- full runs
class _Repeat(torch.utils.data.Dataset):
    """The dataset's images in a given (repeating) sequence; keeps ``records`` for describe()."""

    def __init__(self, dataset, sequence):
        self.dataset, self.sequence = dataset, [int(i) for i in sequence]

    def __len__(self):
        return len(self.sequence)

    def __getitem__(self, i):
        return self.dataset[self.sequence[i]]


def full_rows(table, st, ds, size, samples, seed):
    n_batches = max(1, math.ceil(samples / BATCH))
    rng = np.random.default_rng(seed)
    sequence = np.concatenate([rng.permutation(len(ds)) for _ in range(math.ceil(n_batches * BATCH / len(ds)))])
    sequence = sequence[:n_batches * BATCH]

    # the same resized uint8 images and pixel boxes for both sides (our own resize path)
    plain = DetectionSamples(ds, size, "bilinear", NO_AUGMENTATION)
    images, boxes, box_image = [], [], []
    for u in range(len(ds)):
        s = plain[u]
        images.append(np.round((s["image"].permute(1, 2, 0).numpy() + 1.0) * 127.5).astype(np.uint8))
        boxes.append(s["boxes"].double().numpy() * size)
        box_image += [u] * len(s["boxes"])
    n_boxes = np.array([len(b) for b in boxes])

    t0 = time.time()
    res = st(mode="full", images=np.stack(images), boxes=np.concatenate(boxes), box_image=np.array(box_image),
             sequence=sequence, batch_size=BATCH, seed=seed)
    t_st = time.time() - t0
    st_batch = res["pos"] // BATCH
    st_box_batch = res["box_id"] // 1000 // BATCH
    in_boxes_batch = np.array([n_boxes[sequence[b * BATCH:(b + 1) * BATCH]].sum() for b in range(n_batches)])
    st_kept_img = np.bincount(st_batch, minlength=n_batches)
    st_kept_box = np.bincount(st_box_batch, minlength=n_batches)
    st_xyxy = res["box_xyxy"]

    # ours: DetectionDataModule.train_dataloader (OrderedBatchSampler + DetectionCollate(drop_empty))
    torch.manual_seed(seed)
    dm = DetectionDataModule(train=str(ds.root), val=str(ds.root), input_size=size, batch_size=BATCH,
                             num_workers=0, pin_memory=False, augmentation=Augmentation(),
                             train_interpolation="bilinear", drop_last=True, drop_empty=True)
    dm.train_set = _Repeat(ds, sequence)
    dm.val_set = ds
    t0 = time.time()
    o_kept_img, o_kept_box, o_xyxy, o_mean, o_std = [], [], [], [], []
    o_removed, o_in, o_per_image = [], [], []
    for batch in dm.train_dataloader():
        kept = sum(len(b) for b in batch["boxes"])
        o_kept_box.append(kept)
        o_removed.append(int(batch["boxes_dropped"]))
        o_in.append(kept + int(batch["boxes_dropped"]))
        img = (batch["images"].double() + 1.0) * 127.5
        o_kept_img.append(BATCH - int(batch["images_dropped"]))  # collate left the others out
        o_mean += img.mean(dim=(1, 2, 3)).tolist()
        o_std += img.flatten(1).std(dim=1, unbiased=False).tolist()
        o_xyxy += [b.double().numpy() * size for b in batch["boxes"]]
        o_per_image += [len(b) for b in batch["boxes"]]
    t_ours = time.time() - t0
    o_xyxy = np.concatenate(o_xyxy) if o_xyxy else np.zeros((0, 4))
    o_kept_img, o_kept_box, o_in = np.array(o_kept_img), np.array(o_kept_box), np.array(o_in)
    assert o_in.sum() == in_boxes_batch.sum(), (o_in.sum(), in_boxes_batch.sum())

    table.means("full: images dropped per batch (rate)", 1 - st_kept_img / BATCH, 1 - o_kept_img / BATCH)
    table.means("full: boxes removed per batch (rate)", 1 - st_kept_box / in_boxes_batch, 1 - o_kept_box / o_in)

    def border(b):
        e = 1e-3
        return (b[:, 0] <= e) | (b[:, 1] <= e) | (b[:, 2] >= size - e) | (b[:, 3] >= size - e)

    def per_batch(flag, batch_of_box, nb):
        return np.bincount(batch_of_box, weights=flag.astype(float), minlength=nb) / np.maximum(
            np.bincount(batch_of_box, minlength=nb), 1)

    o_box_batch = np.repeat(np.arange(n_batches), o_kept_box)
    table.means("full: kept boxes on the border (clipped) per batch", per_batch(border(st_xyxy), st_box_batch, n_batches),
                per_batch(border(o_xyxy), o_box_batch, n_batches))
    sub = lambda b: np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) < 1.0  # noqa: E731
    table.means("full: kept boxes under 1 px per batch", per_batch(sub(st_xyxy), st_box_batch, n_batches),
                per_batch(sub(o_xyxy), o_box_batch, n_batches))
    table.rate("full: kept boxes under 1 px (all)", int(sub(st_xyxy).sum()), len(st_xyxy), int(sub(o_xyxy).sum()),
               len(o_xyxy))

    def geo(b):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        ok = (w > 0) & (h > 0)
        return {"area": (w * h / size ** 2), "log_aspect": np.log(w[ok] / h[ok]),
                "cx": (b[:, 0] + b[:, 2]) / 2 / size, "cy": (b[:, 1] + b[:, 3]) / 2 / size}

    sg, og = geo(st_xyxy), geo(o_xyxy)
    table.dist("full: box area (fraction of image)", sg["area"], og["area"], "{:.4f}")
    table.dist("full: box log(w/h)", sg["log_aspect"], og["log_aspect"])
    table.dist("full: box centre x", sg["cx"], og["cx"])
    table.dist("full: box centre y", sg["cy"], og["cy"])
    st_pos = res["box_id"] // 1000
    table.dist("full: boxes per kept image", np.bincount(st_pos)[np.unique(st_pos)], o_per_image, "{:.2f}")
    table.dist("full: pixel mean per image", res["pix_mean"], o_mean, "{:.2f}")
    table.dist("full: pixel std per image", res["pix_std"], o_std, "{:.2f}")
    return {"samples_st": int(res["n_in"]), "samples_ours": int(n_batches * BATCH), "seconds_st": round(t_st, 1),
            "seconds_ours": round(t_ours, 1), "st_versions": str(res["versions"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--st-src", type=Path, required=True, help="stm32ai-modelzoo root (holds object_detection/src)")
    ap.add_argument("--st-python", default="/tmp/st_aug_venv/bin/python")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    ds = open_dataset(args.data)
    table = Table()
    ops = A.build_ops(Augmentation())
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="augment_parity_") as tmp:
        st = STRunner(args.st_src, args.st_python, Path(tmp))
        info = full_rows(table, st, ds, args.size, args.samples, args.seed)
        op_rows(table, st, ops, args.size, args.samples, args.seed + 100)
    alpha = table.finish()
    table.print()
    print(f"{len(table.rows)} rows; a row fails when p < {FAMILY_ALPHA} / {len(table.rows)} = {alpha:.2e} "
          f"(Bonferroni, family-wise false-failure rate {FAMILY_ALPHA}); KS p-values from "
          f"{'scipy' if _has_scipy() else 'the asymptotic Kolmogorov distribution'}")
    failed = [r["statistic"] for r in table.rows if r["verdict"] == "FAIL"]
    result = {"bench": "augment_parity", "size": args.size, "family_alpha": FAMILY_ALPHA, "row_alpha": alpha, **info,
              "seconds": round(time.time() - t0, 1), "rows": table.rows, "failed": failed, "pass": not failed}
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
