"""COCO / YOLO-Darknet readers on tiny real image files written here, plus the shared COCO subset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssd_mnv1.data import DetectionDataset, Record, open_dataset, read_coco, read_yolo

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 3, "name": "car", "supercategory": "vehicle"}]


def write_image(path: Path, size=(40, 30), mode="RGB", fmt=None, exif_orientation=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"L": 128, "RGBA": (10, 200, 30, 128), "CMYK": (0, 255, 255, 0)}.get(mode, (200, 30, 10))
    im = Image.new(mode, size, color)
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    im.save(path, format=fmt, **kwargs)
    return path


def coco_set(root: Path, anns=None, images=None, categories=None, json_name="annotations.json") -> Path:
    """Three 40x30 images: a (2 persons, one crowd), b (person + car), c (car only)."""
    if images is None:
        images = [{"id": 10, "file_name": "a.jpg", "width": 40, "height": 30},
                  {"id": 11, "file_name": "b.jpg", "width": 40, "height": 30},
                  {"id": 12, "file_name": "c.jpg", "width": 40, "height": 30}]
    for img in images:
        write_image(root / "images" / img["file_name"], (img.get("width", 40), img.get("height", 30)))
    if anns is None:
        anns = [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 3, 20, 15], "area": 250.5, "iscrowd": 0},
                {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0, 0, 10, 30], "area": 300.0, "iscrowd": 1},
                {"id": 3, "image_id": 11, "category_id": 1, "bbox": [10, 6, 8, 12], "iscrowd": 0},
                {"id": 4, "image_id": 11, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0},
                {"id": 5, "image_id": 12, "category_id": 3, "bbox": [2, 2, 4, 4], "area": 16.0, "iscrowd": 0}]
    data = {"images": images, "annotations": anns, "categories": categories or CATEGORIES}
    path = root / json_name
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------- COCO


def test_coco_round_trip_tiny_set(tmp_path):
    ds = read_coco(coco_set(tmp_path))
    assert isinstance(ds, DetectionDataset) and ds.layout == "coco" and ds.class_names == ["person"]
    assert len(ds) == 2 and [r.image_id for r in ds.records] == [10, 11]
    a, b = ds.records
    np.testing.assert_allclose(a.boxes, [[4 / 40, 3 / 30, 24 / 40, 18 / 30], [0, 0, 10 / 40, 1]], atol=1e-7)
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64 and a.iscrowd.dtype == bool
    assert a.areas.dtype == np.float32
    np.testing.assert_array_equal(a.labels, [1, 1])
    np.testing.assert_allclose(a.areas, [250.5, 300.0])           # official area when given
    np.testing.assert_allclose(b.areas, [8 * 12])                  # else the box area
    assert (a.width, a.height) == (40, 30) and a.file == tmp_path / "images" / "a.jpg"
    image, rec = ds[0]
    assert rec is a and image.dtype == np.uint8 and image.shape == (30, 40, 3)


def test_coco_crowd_box_kept_with_flag(tmp_path):
    a = read_coco(coco_set(tmp_path)).records[0]
    np.testing.assert_array_equal(a.iscrowd, [False, True])
    assert len(a.boxes) == 2


def test_coco_image_without_person_dropped_and_counted(tmp_path):
    ds = read_coco(coco_set(tmp_path))
    assert 12 not in [r.image_id for r in ds.records]
    assert ds.skipped == {"no_boxes": 1}
    assert "skipped no_boxes=1" in ds.describe()


def test_coco_keep_empty_keeps_image_without_person(tmp_path):
    ds = read_coco(coco_set(tmp_path), keep_empty=True)
    assert [r.image_id for r in ds.records] == [10, 11, 12] and ds.skipped == {}
    empty = ds.records[2]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,) and empty.iscrowd.shape == (0,)
    assert ds[2][0].shape == (30, 40, 3)


def test_coco_several_classes_label_in_class_names_order(tmp_path):
    ds = read_coco(coco_set(tmp_path), class_names=("car", "person"))
    assert len(ds) == 3
    np.testing.assert_array_equal(ds.records[1].labels, [2, 1])   # person, car in annotation order
    np.testing.assert_array_equal(ds.records[2].labels, [1])


def test_coco_official_layout_finds_split_folder(tmp_path):
    json_path = coco_set(tmp_path / "tmp")
    (tmp_path / "annotations").mkdir()
    official = tmp_path / "annotations" / "instances_val2017.json"
    official.write_text(json_path.read_text())
    (tmp_path / "tmp" / "images").rename(tmp_path / "val2017")
    ds = read_coco(official)
    assert ds.records[0].file == tmp_path / "val2017" / "a.jpg"


def test_coco_images_beside_json_and_explicit_image_dir(tmp_path):
    json_path = coco_set(tmp_path / "x")
    moved = tmp_path / "pics"
    (tmp_path / "x" / "images").rename(moved)
    with pytest.raises(ValueError, match="a.jpg"):   # default: the json's own folder, which has none
        read_coco(json_path)
    assert len(read_coco(json_path, image_dir=moved)) == 2


def test_coco_missing_size_read_from_header(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 15]}]
    rec = read_coco(coco_set(tmp_path, anns, images)).records[0]
    assert (rec.width, rec.height) == (40, 30)
    np.testing.assert_allclose(rec.boxes, [[0, 0, 0.5, 0.5]])


def test_coco_nonpositive_bbox_skipped_with_warning(tmp_path):
    anns = [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 3, 0, 15]},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [4, 3, 10, -1]},
            {"id": 3, "image_id": 11, "category_id": 1, "bbox": [4, 3, 10, 10]}]
    with pytest.warns(UserWarning, match=r"annotations.json: skipped 2 box\(es\).*id 1"):
        ds = read_coco(coco_set(tmp_path, anns))
    assert [r.image_id for r in ds.records] == [11]
    assert ds.skipped == {"bad_bbox": 2, "no_boxes": 2}


def test_coco_box_over_the_edge_clipped_outside_skipped(tmp_path):
    anns = [{"id": 1, "image_id": 10, "category_id": 1, "bbox": [-2, 25, 10, 10]},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [45, 3, 10, 10]}]
    with pytest.warns(UserWarning, match=r"skipped 1 box\(es\) lying entirely outside their image, "
                                         r"e.g. annotations\[1\] \(id 2\)"):
        ds = read_coco(coco_set(tmp_path, anns))
    np.testing.assert_allclose(ds.records[0].boxes, [[0, 25 / 30, 8 / 40, 1]], atol=1e-7)
    assert ds.skipped["bbox_outside_image"] == 1


def test_coco_exif_rotated_file_returns_stored_pixels_matching_json(tmp_path):
    # COCO's width/height describe the stored pixel grid that the boxes refer to.
    coco_set(tmp_path)
    write_image(tmp_path / "images" / "a.jpg", (40, 30), exif_orientation=6)
    image, rec = read_coco(tmp_path / "annotations.json")[0]
    assert image.shape == (30, 40, 3) and (rec.width, rec.height) == (40, 30)


def _bad_coco(tmp_path, mutate):
    path = coco_set(tmp_path)
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d.pop("images"), "missing key 'images'"),
    (lambda d: d.pop("annotations"), "missing key 'annotations'"),
    (lambda d: d.pop("categories"), "missing key 'categories'"),
    (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\] has no 'bbox'"),
    (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\] has no 'image_id'"),
    (lambda d: d["annotations"][0].pop("category_id"), r"annotations\[0\] has no 'category_id'"),
    (lambda d: d["images"][1].pop("file_name"), r"images\[1\] has no 'file_name'"),
    (lambda d: d["images"][0].pop("id"), r"images\[0\] has no 'id'"),
    (lambda d: d["annotations"][2].update(image_id=99), r"annotations\[2\] \(id 3\) field 'image_id' .*unknown image id 99"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\] \(id 1\) field 'bbox' must be"),
    (lambda d: d["annotations"][0].update(bbox=[1, "x", 3, 4]), r"annotations\[0\] \(id 1\) field 'bbox' has non-numeric"),
    (lambda d: d["images"][0].update(width=0), r"images entry id 10 field 'width' must be a positive"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"images\[3\] repeats image id 10"),
])
def test_coco_bad_input_names_file_and_field(tmp_path, mutate, pattern):
    path = _bad_coco(tmp_path, mutate)
    with pytest.raises(ValueError, match=pattern) as info:
        read_coco(path)
    assert "annotations.json" in str(info.value)


def test_coco_unknown_category_lists_available(tmp_path):
    with pytest.raises(ValueError, match=r"annotations.json: unknown category name\(s\) 'dog'; available: car, person"):
        read_coco(coco_set(tmp_path), class_names=("dog",))


def test_coco_missing_image_file_named(tmp_path):
    path = coco_set(tmp_path)
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(ValueError, match=r"annotations.json: images entry id 11 field 'file_name': .*b.jpg does not exist"):
        read_coco(path)


def test_coco_not_json(tmp_path):
    (tmp_path / "annotations.json").write_text("{nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="annotations.json: not valid JSON"):
        read_coco(tmp_path / "annotations.json")


# ----------------------------------------------------------------------------------------- YOLO


def test_yolo_labels_beside_images(tmp_path):
    write_image(tmp_path / "b.jpg", (40, 20))
    write_image(tmp_path / "a.jpg", (40, 20))
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n0 0.250000 0.750000 0.100000 0.200000\n")
    (tmp_path / "b.txt").write_text("0 0.1 0.1 0.2 0.2\n")
    ds = read_yolo(tmp_path)
    assert ds.layout == "yolo" and [r.file.name for r in ds.records] == ["a.jpg", "b.jpg"]
    assert [r.image_id for r in ds.records] == [0, 1]
    a = ds.records[0]
    np.testing.assert_allclose(a.boxes, [[0.25, 0.25, 0.75, 0.75], [0.2, 0.65, 0.3, 0.85]], atol=1e-7)
    np.testing.assert_array_equal(a.labels, [1, 1])
    np.testing.assert_array_equal(a.iscrowd, [False, False])
    np.testing.assert_allclose(a.areas, [20 * 10, 4 * 4], rtol=1e-5)
    assert (a.width, a.height) == (40, 20) and ds[0][0].shape == (20, 40, 3)


def test_yolo_images_and_labels_folders(tmp_path):
    write_image(tmp_path / "images" / "x.png", (32, 32), fmt="PNG")
    write_image(tmp_path / "images" / "y.bmp", (32, 16), fmt="BMP")
    write_image(tmp_path / "images" / "z.jpeg", (16, 16))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "x.txt").write_text("0 0.5 0.5 1 1\n")
    (tmp_path / "labels" / "y.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "labels" / "z.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.warns(UserWarning, match=r"ignored 1 label file\(s\) without an image, e.g. .*orphan.txt"):
        ds = read_yolo(tmp_path)
    assert [r.file.name for r in ds.records] == ["x.png", "y.bmp", "z.jpeg"]
    assert ds.skipped == {"orphan_label_file": 1}
    assert ds[1][0].shape == (16, 32, 3)
    # The images/ folder itself, with labels/ beside it, is the same set.
    with pytest.warns(UserWarning, match="orphan.txt"):
        assert [r.file for r in read_yolo(tmp_path / "images").records] == [r.file for r in ds.records]


def test_yolo_missing_or_empty_label_file_dropped_and_counted(tmp_path):
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}.jpg")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "b.txt").write_text("\n")
    with pytest.warns(UserWarning, match=r"skipped 1 image\(s\) without a label file, e.g. .*c.jpg"):
        ds = read_yolo(tmp_path)
    assert [r.file.name for r in ds.records] == ["a.jpg"]
    assert ds.skipped == {"no_boxes": 1, "no_label_file": 1}
    kept = read_yolo(tmp_path, keep_empty=True)
    assert [r.image_id for r in kept.records] == [0, 1, 2] and kept.skipped == {}
    assert kept.records[2].boxes.shape == (0, 4)


def test_set_left_empty_after_skipping_is_an_error_with_the_counts(tmp_path):
    """Evaluating or training on zero images is never intended; say why nothing is left."""
    write_image(tmp_path / "y" / "a.jpg")
    (tmp_path / "y" / "a.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"y: dataset is empty: no image with a box of class 'person' "
                                         r"\(skipped: no_boxes=1\)"):
        read_yolo(tmp_path / "y")
    anns = [{"id": 1, "image_id": 12, "category_id": 3, "bbox": [2, 2, 4, 4]}]
    with pytest.raises(ValueError, match=r"annotations.json: dataset is empty: .*\(skipped: no_boxes=3\)"):
        read_coco(coco_set(tmp_path / "c", anns))
    assert len(read_coco(tmp_path / "c" / "annotations.json", keep_empty=True)) == 3


def test_yolo_several_classes(tmp_path):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("1 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.2 0.2\n")
    np.testing.assert_array_equal(read_yolo(tmp_path, class_names=["person", "car"]).records[0].labels, [2, 1])


@pytest.mark.parametrize("line, pattern", [
    ("1 0.5 0.5 0.2 0.2", r"a.txt:2: class id 1 out of range"),
    ("-1 0.5 0.5 0.2 0.2", r"a.txt:2: class id -1 out of range"),
    ("person 0.5 0.5 0.2 0.2", r"a.txt:2: class id 'person' is not an integer"),
    ("0.0 0.5 0.5 0.2 0.2", r"a.txt:2: class id '0.0' is not an integer"),
    ("0 0.5 abc 0.2 0.2", r"a.txt:2: non-numeric coordinate"),
    ("0 0.5 0.5 0.2", r"a.txt:2: expected 5 columns .*got 4"),
    ("0 0.5 0.5 0.2 0.2 0.9", r"a.txt:2: expected 5 columns .*got 6"),
    ("0 0.5 0.5 0 0.2", r"a.txt:2: box width and height must be > 0"),
    ("0 0.5 0.5 0.2 -0.1", r"a.txt:2: h = -0.1 is outside \[0, 1\]"),
    ("0 1.2 0.5 0.2 0.2", r"a.txt:2: cx = 1.2 is outside \[0, 1\]"),
    ("0 0.5 -0.01 0.2 0.2", r"a.txt:2: cy = -0.01 is outside \[0, 1\]"),
    ("0 0.5 0.5 nan 0.2", r"a.txt:2: w = nan is outside"),
])
def test_yolo_bad_line_names_file_and_line(tmp_path, line, pattern):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(ValueError, match=pattern):
        read_yolo(tmp_path)


def test_yolo_binary_label_file_named(tmp_path):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=r"a.txt: not a UTF-8 text label file"):
        read_yolo(tmp_path)


def test_yolo_rounding_tolerance_clipped_and_overhang_clipped(tmp_path):
    write_image(tmp_path / "a.jpg", (40, 20))
    (tmp_path / "a.txt").write_text("0 1.0000005 0.5 0.2 0.2\n0 0.05 0.5 0.2 0.2\n")
    boxes = read_yolo(tmp_path).records[0].boxes
    np.testing.assert_allclose(boxes, [[0.9, 0.4, 1.0, 0.6], [0.0, 0.4, 0.15, 0.6]], atol=1e-7)


def test_yolo_two_images_one_label_name_refused(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "a.png", fmt="PNG")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"a.txt: label file is claimed by two images"):
        read_yolo(tmp_path)


def test_yolo_exif_rotated_image_reports_rotated_size(tmp_path):
    write_image(tmp_path / "r.jpg", (40, 20), exif_orientation=6)   # stored 40x20, displayed 20x40
    (tmp_path / "r.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    ds = read_yolo(tmp_path)
    rec = ds.records[0]
    assert (rec.width, rec.height) == (20, 40)
    image, _ = ds[0]
    assert image.shape == (40, 20, 3)
    np.testing.assert_allclose(rec.areas, [10 * 20], rtol=1e-5)


@pytest.mark.parametrize("mode, fmt, name", [("L", "PNG", "g.png"), ("RGBA", "PNG", "t.png"),
                                             ("CMYK", "JPEG", "c.jpg"), ("L", "JPEG", "g.jpg")])
def test_non_rgb_images_load_as_rgb(tmp_path, mode, fmt, name):
    write_image(tmp_path / name, (24, 12), mode=mode, fmt=fmt)
    (tmp_path / name).with_suffix(".txt").write_text("0 0.5 0.5 0.5 0.5\n")
    image, rec = read_yolo(tmp_path)[0]
    assert image.dtype == np.uint8 and image.shape == (12, 24, 3) and (rec.width, rec.height) == (24, 12)


def test_undecodable_image_raises_with_path(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "bad.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_yolo(tmp_path)


# ---------------------------------------------------------------------------------- auto-detect


def test_open_dataset_autodetects_layouts(tmp_path):
    coco_dir = tmp_path / "coco"
    json_path = coco_set(coco_dir)
    assert open_dataset(coco_dir).layout == "coco"
    assert open_dataset(json_path).layout == "coco"
    single = tmp_path / "single"
    coco_set(single, json_name="instances_val2017.json")
    assert open_dataset(single).layout == "coco"

    beside = tmp_path / "beside"
    write_image(beside / "a.jpg")
    (beside / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    assert open_dataset(beside).layout == "yolo"
    split = tmp_path / "split"
    write_image(split / "images" / "a.jpg")
    (split / "labels").mkdir()
    (split / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    ds = open_dataset(split, class_names=["person"], keep_empty=True)
    assert ds.layout == "yolo" and len(ds) == 1


def test_open_dataset_refuses_empty_folder_and_other_things(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: folder is empty; expected a COCO .json file"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nothere"):
        open_dataset(tmp_path / "nothere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt: not a dataset"):
        open_dataset(tmp_path / "notes.txt")
    pics = tmp_path / "pics"
    write_image(pics / "a.jpg")
    with pytest.raises(ValueError, match=r"pics: not a dataset"):
        open_dataset(pics)
    out = tmp_path / "out"
    (out / "coco").mkdir(parents=True)
    (out / "yolo").mkdir()
    with pytest.raises(ValueError, match=r"prepare_data output folder; pass .*coco or .*yolo"):
        open_dataset(out)
    many = tmp_path / "many"
    many.mkdir()
    (many / "x.json").write_text("{}")
    (many / "y.json").write_text("{}")
    with pytest.raises(ValueError, match=r"several json files \(x.json, y.json\)"):
        open_dataset(many)


def test_record_empty_helper():
    rec = Record.empty(3, Path("a.jpg"), 10, 20)
    assert rec.boxes.shape == (0, 4) and rec.boxes.dtype == np.float32 and rec.labels.dtype == np.int64


# ------------------------------------------------------------------------------- shared COCO data


def test_shared_coco_person_val_counts(coco_person_val):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_dataset(coco_person_val)
    assert ds.layout == "coco" and len(ds) == 690
    assert ds.num_boxes == 1781 and ds.num_crowd == 32 and ds.skipped == {}
    assert all(r.file.is_file() for r in ds.records)
    boxes = np.concatenate([r.boxes for r in ds.records])
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 1
    image, rec = ds[0]
    assert image.shape == (rec.height, rec.width, 3)
