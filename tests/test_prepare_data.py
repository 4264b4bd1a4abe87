"""COCO 2017 -> person set (ST's converter) or several categories, from folders, zips and a loopback
HTTP download."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssd_mnv1.data import open_dataset
from ssd_mnv1.download import download_file, load_checksums
from ssd_mnv1.data.prepare import CocoSource, prepare_coco
from ssd_mnv1.data.writer import yolo_line
from ssd_mnv1.prepare_data import main

SPLIT = "val2017"
LINE = re.compile(r"^\d+ \d\.\d{6} \d\.\d{6} \d\.\d{6} \d\.\d{6}$")


def jpeg_bytes(size=(64, 48), color=(120, 40, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def coco_json() -> dict:
    """3 images: p1 (2 persons, one crowd, + a car), p2 (1 person), empty (a car only)."""
    images = [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48, "license": 1},
              {"id": 2, "file_name": "000000000002.jpg", "width": 64, "height": 48, "license": 1},
              {"id": 3, "file_name": "000000000003.jpg", "width": 64, "height": 48, "license": 1}]
    anns = [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [8.5, 4.25, 20.0, 30.0], "area": 400.5,
             "iscrowd": 0, "segmentation": [[8.5, 4.25, 28.5, 4.25, 28.5, 34.25]]},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "area": 25.0, "iscrowd": 0},
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [40, 10, 24, 38], "area": 700.0, "iscrowd": 1},
            {"id": 14, "image_id": 2, "category_id": 1, "bbox": [0, 0, 64, 48], "area": 3000.0, "iscrowd": 0},
            {"id": 15, "image_id": 3, "category_id": 3, "bbox": [2, 2, 4, 4], "area": 16.0, "iscrowd": 0}]
    cats = [{"supercategory": "person", "id": 1, "name": "person"},
            {"supercategory": "vehicle", "id": 3, "name": "car"}]
    return {"info": {"year": 2017}, "licenses": [{"id": 1, "name": "x"}], "images": images,
            "annotations": anns, "categories": cats}


def extracted_coco(root: Path, data: dict | None = None) -> Path:
    data = data or coco_json()
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / f"instances_{SPLIT}.json").write_text(json.dumps(data))
    (root / SPLIT).mkdir()
    for img in data["images"]:
        (root / SPLIT / img["file_name"]).write_bytes(jpeg_bytes((img["width"], img["height"])))
    return root


def zipped_coco(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = coco_json()
    with zipfile.ZipFile(root / "annotations_trainval2017.zip", "w") as zf:
        zf.writestr(f"annotations/instances_{SPLIT}.json", json.dumps(data))
        zf.writestr("annotations/captions_val2017.json", "{}")
    with zipfile.ZipFile(root / f"{SPLIT}.zip", "w") as zf:
        zf.writestr(f"{SPLIT}/", "")
        for img in data["images"]:
            zf.writestr(f"{SPLIT}/{img['file_name']}", jpeg_bytes((img["width"], img["height"])))
    return root


def check_output(out: Path, source_json: dict) -> None:
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert [i["id"] for i in coco["images"]] == [1, 2]
    assert [a["id"] for a in coco["annotations"]] == [11, 13, 14]
    assert coco["categories"] == [{"supercategory": "person", "id": 1, "name": "person"}]
    assert coco["annotations"][0] == source_json["annotations"][0]          # unchanged, segmentation kept
    assert coco["info"] == {"year": 2017} and coco["licenses"] == [{"id": 1, "name": "x"}]
    assert sorted(p.name for p in (out / "coco" / "images").iterdir()) == ["000000000001.jpg", "000000000002.jpg"]
    assert sorted(p.name for p in (out / "yolo" / "images").iterdir()) == ["000000000001.jpg", "000000000002.jpg"]
    assert sorted(p.name for p in (out / "yolo" / "labels").iterdir()) == ["000000000001.txt", "000000000002.txt"]
    lines = (out / "yolo" / "labels" / "000000000001.txt").read_text().splitlines()
    # ST's converter: class cx cy w h with 6 decimals, crowd box included, annotation order.
    assert lines == ["0 0.289062 0.401042 0.312500 0.625000", "0 0.812500 0.604167 0.375000 0.791667"]
    assert all(LINE.match(line) for line in lines)
    assert (out / "yolo" / "labels" / "000000000002.txt").read_text() == "0 0.500000 0.500000 1.000000 1.000000\n"
    c, y = open_dataset(out / "coco"), open_dataset(out / "yolo")
    assert (len(c), c.num_boxes, c.num_crowd) == (2, 3, 1)
    assert (len(y), y.num_boxes) == (2, 3)
    for rc, ry in zip(c.records, y.records):
        np.testing.assert_allclose(rc.boxes, ry.boxes, atol=1e-6)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))


def test_prepare_folder_input_writes_both_layouts(tmp_path, capsys):
    src = extracted_coco(tmp_path / "coco2017")
    assert main(["--coco", str(src), "--split", SPLIT, "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert f"{SPLIT}: 3 images, kept 2 with >= 1 person box, dropped 1 without" in text
    assert "boxes: 3 (1 crowd" in text
    check_output(tmp_path / "out", coco_json())


def test_prepare_rerun_reuses_images_and_refuses_foreign_files(tmp_path):
    src = extracted_coco(tmp_path / "coco2017")
    out = tmp_path / "out"
    first = prepare_coco([src], SPLIT, out, progress=False)
    assert (first.images_copied, first.images_reused) == (4, 0)
    again = prepare_coco([src], SPLIT, out, progress=False)
    assert (again.images_copied, again.images_reused) == (0, 4)
    check_output(out, coco_json())
    (out / "yolo" / "labels" / "stale.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"labels already holds 1 file\(s\) this run would not write \(e.g. stale.txt\)"):
        prepare_coco([src], SPLIT, out, progress=False)


def test_prepare_zip_input(tmp_path, capsys):
    zips = zipped_coco(tmp_path / "zips")
    assert main(["--coco", str(zips), "--split", SPLIT, "--out", str(tmp_path / "a")]) == 0
    check_output(tmp_path / "a", coco_json())
    assert "annotations/instances_val2017.json in" in capsys.readouterr().out
    # The two zip files given directly, in any order.
    main(["--coco", str(zips / f"{SPLIT}.zip"), str(zips / "annotations_trainval2017.zip"),
          "--split", SPLIT, "--out", str(tmp_path / "b")])
    check_output(tmp_path / "b", coco_json())


def test_prepare_single_layout_and_several_classes(tmp_path):
    src = extracted_coco(tmp_path / "coco2017")
    stats = prepare_coco([src], SPLIT, tmp_path / "out", ["car", "person"], layouts=["yolo"], progress=False)
    assert not (tmp_path / "out" / "coco").exists()
    assert (stats.images_kept, stats.images_dropped, stats.boxes) == (3, 0, 5)
    lines = (tmp_path / "out" / "yolo" / "labels" / "000000000001.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "0", "1"]


def multi_category_json() -> dict:
    """coco_json plus a dog (id 18) and a traffic light (id 10, a name with a space): four categories
    whose ids are neither contiguous nor in the order the classes are asked for."""
    data = coco_json()
    data["categories"] += [{"supercategory": "animal", "id": 18, "name": "dog"},
                           {"supercategory": "outdoor", "id": 10, "name": "traffic light"}]
    data["annotations"] += [{"id": 16, "image_id": 3, "category_id": 18, "bbox": [10, 8, 30, 20], "area": 600.0,
                             "iscrowd": 0},
                            {"id": 17, "image_id": 2, "category_id": 10, "bbox": [50, 2, 6, 16], "area": 96.0,
                             "iscrowd": 0}]
    return data


def test_prepare_several_categories_in_both_layouts(tmp_path, capsys):
    src = extracted_coco(tmp_path / "coco2017", multi_category_json())
    out = tmp_path / "out"
    names = ["traffic light", "dog", "person"]                     # car (id 3) left out
    assert main(["--coco", str(src), "--split", SPLIT, "--out", str(out), "--classes", "traffic light",
                 "dog,person"]) == 0
    text = capsys.readouterr().out
    assert "kept 3 with >= 1 traffic light/dog/person box" in text
    assert "per class: traffic light 1, dog 1, person 3" in text
    # YOLO: class ids 0..C-1 in --classes order, annotation order within a file, the car dropped.
    labels = out / "yolo" / "labels"
    assert [line.split()[0] for line in (labels / "000000000001.txt").read_text().splitlines()] == ["2", "2"]
    assert [line.split()[0] for line in (labels / "000000000002.txt").read_text().splitlines()] == ["2", "0"]
    assert (labels / "000000000003.txt").read_text() == "1 0.390625 0.375000 0.468750 0.416667\n"
    # COCO: official ids kept, only the chosen categories, listed in --classes order.
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(10, "traffic light"), (18, "dog"), (1, "person")]
    assert [a["id"] for a in coco["annotations"]] == [11, 13, 14, 17, 16]
    # Both layouts read back with the same labels (1-based, --classes order) and boxes.
    c, y = open_dataset(out / "coco", class_names=names), open_dataset(out / "yolo", class_names=names)
    assert len(c) == len(y) == 3
    for rc, ry in zip(c.records, y.records):
        np.testing.assert_array_equal(rc.labels, ry.labels)
        np.testing.assert_allclose(rc.boxes, ry.boxes, atol=1e-6)
    assert [r.labels.tolist() for r in c.records] == [[3, 3], [3, 1], [2]]


def test_prepare_unknown_category_is_one_error_before_writing(tmp_path, capsys):
    from ssd_mnv1.cli import run

    src = extracted_coco(tmp_path / "coco2017", multi_category_json())
    with pytest.raises(SystemExit) as done:
        run(main, ["--coco", str(src), "--split", SPLIT, "--out", str(tmp_path / "out"),
                   "--classes", "person", "persn", "zebra"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and err.rstrip().endswith(
        "--classes: unknown category name(s) 'persn', 'zebra'; did you mean 'person'?; "
        "available: car, dog, person, traffic light")
    assert not (tmp_path / "out").exists()


def test_prepare_drops_degenerate_boxes_and_clips_overhang_in_yolo(tmp_path):
    data = coco_json()
    data["annotations"][3]["bbox"] = [0, 0, 0, 48]             # image 2's only person: degenerate
    data["annotations"][2]["bbox"] = [40, 10, 30, 40]          # overhangs right and bottom edges
    src = extracted_coco(tmp_path / "coco2017", data)
    stats = prepare_coco([src], SPLIT, tmp_path / "out", progress=False)
    assert (stats.images_kept, stats.bad_boxes, stats.clipped_boxes) == (1, 1, 1)
    lines = (tmp_path / "out" / "yolo" / "labels" / "000000000001.txt").read_text().splitlines()
    assert lines[1] == "0 0.812500 0.604167 0.375000 0.791667"
    coco = json.loads((tmp_path / "out" / "coco" / "annotations.json").read_text())
    assert coco["annotations"][1]["bbox"] == [40, 10, 30, 40]   # the json keeps the official box


def test_yolo_line_matches_st_converter_format():
    assert yolo_line(0, [10, 20, 30, 40], 100, 200) == ("0 0.250000 0.200000 0.300000 0.200000\n", False)


def test_prepare_errors(tmp_path):
    src = extracted_coco(tmp_path / "coco2017")
    with pytest.raises(ValueError, match=r"unknown category name\(s\) 'dog'; available: car, person"):
        prepare_coco([src], SPLIT, tmp_path / "out", ["dog"], progress=False)
    with pytest.raises(FileNotFoundError, match=r"no annotations/instances_train2017.json .* in .*coco2017"):
        CocoSource([src], "train2017")
    (src / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no train2017/ image folder"):
        CocoSource([src], "train2017")
    with CocoSource([src], SPLIT) as source:
        assert source.image_dir == src / SPLIT and source.ann_json.name == f"instances_{SPLIT}.json"
    (src / SPLIT / "000000000002.jpg").unlink()
    with pytest.raises(ValueError, match=r"image id 2 file '000000000002.jpg' is not in"):
        prepare_coco([src], SPLIT, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()   # nothing written before the checks pass


@pytest.mark.slow
def test_prepare_cli_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ssd_mnv1.prepare_data", "--coco", str(tmp_path / "none"),
                           "--split", SPLIT, "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path / 'none'}: no such COCO folder or zip"


# ------------------------------------------------------------------------------ loopback download


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (url path -> bytes) with HTTP Range support."""

    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.drop_after is not None:        # simulate a connection lost mid-transfer, once
            payload, srv.drop_after = payload[:srv.drop_after], None
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    zips = zipped_coco(tmp_path / "served")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.files = {"/annotations/annotations_trainval2017.zip": (zips / "annotations_trainval2017.zip").read_bytes(),
                    f"/zips/{SPLIT}.zip": (zips / f"{SPLIT}.zip").read_bytes()}
    server.log, server.honour_range, server.drop_after = [], True, None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def _checksums(tmp_path, files: dict, wrong: str | None = None) -> Path:
    table = {Path(k).name: hashlib.md5(v).hexdigest() for k, v in files.items()}
    if wrong:
        table[wrong] = "0" * 32
    path = tmp_path / "checksums.json"
    path.write_text(json.dumps(table))
    return path


def test_download_over_loopback_resumes_and_verifies(tmp_path, loopback, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    body = loopback.files[f"/zips/{SPLIT}.zip"]
    (cache / f"{SPLIT}.zip.part").write_bytes(body[:1000])         # an interrupted earlier download
    sums = _checksums(tmp_path, loopback.files)
    assert main(["--download", "--coco", str(cache), "--base-url", loopback.url, "--checksums", str(sums),
                 "--split", SPLIT, "--out", str(tmp_path / "out")]) == 0
    assert (f"/zips/{SPLIT}.zip", "bytes=1000-") in loopback.log
    assert ("/annotations/annotations_trainval2017.zip", None) in loopback.log
    assert (cache / f"{SPLIT}.zip").read_bytes() == body and not list(cache.glob("*.part"))
    text = capsys.readouterr().out
    assert "resuming at byte 1000" in text and f"{SPLIT}.zip: md5 ok" in text
    assert "kept 2 with >= 1 person box, dropped 1 without" in text
    check_output(tmp_path / "out", coco_json())
    # A second run finds the verified archives and downloads nothing.
    n = len(loopback.log)
    main(["--download", "--coco", str(cache), "--base-url", loopback.url, "--checksums", str(sums),
          "--split", SPLIT, "--out", str(tmp_path / "out")])
    assert len(loopback.log) == n


def test_download_checksum_mismatch_is_an_error(tmp_path, loopback):
    cache = tmp_path / "cache"
    sums = _checksums(tmp_path, loopback.files, wrong="annotations_trainval2017.zip")
    with pytest.raises(ValueError, match=r"annotations_trainval2017.zip: md5 mismatch: expected 0{32}, got [0-9a-f]{32}"):
        main(["--download", "--coco", str(cache), "--base-url", loopback.url, "--checksums", str(sums),
              "--split", SPLIT, "--out", str(tmp_path / "out")])
    assert not (cache / "annotations_trainval2017.zip").exists()
    assert not (cache / "annotations_trainval2017.zip.part").exists()
    assert not (tmp_path / "out").exists()


def test_download_without_md5_checks_size_and_says_so(tmp_path, loopback, capsys):
    url = f"{loopback.url}/zips/{SPLIT}.zip"
    body = loopback.files[f"/zips/{SPLIT}.zip"]
    download_file(url, tmp_path / "a.zip", progress=False)
    assert "no known md5; verified the size only" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"size mismatch: expected 5 bytes"):
        download_file(url, tmp_path / "b.zip", size=5, progress=False)
    assert (tmp_path / "a.zip").read_bytes() == body and not (tmp_path / "b.zip.part").exists()


def test_download_restarts_when_server_ignores_range_and_retries_dropped_connection(tmp_path, loopback, capsys):
    url = f"{loopback.url}/zips/{SPLIT}.zip"
    body = loopback.files[f"/zips/{SPLIT}.zip"]
    md5 = hashlib.md5(body).hexdigest()
    loopback.honour_range = False
    (tmp_path / "a.zip.part").write_bytes(b"garbage" * 50)
    download_file(url, tmp_path / "a.zip", md5=md5, progress=False)
    assert (tmp_path / "a.zip").read_bytes() == body
    assert "ignored the resume request" in capsys.readouterr().out

    loopback.honour_range, loopback.drop_after = True, 700
    download_file(url, tmp_path / "b.zip", md5=md5, progress=False)
    assert (tmp_path / "b.zip").read_bytes() == body
    assert loopback.log[-1] == (f"/zips/{SPLIT}.zip", "bytes=700-")

    (tmp_path / "c.zip.part").write_bytes(body)           # complete, but killed before the rename
    download_file(url, tmp_path / "c.zip", md5=md5, progress=False)
    assert loopback.log[-1] == (f"/zips/{SPLIT}.zip", f"bytes={len(body)}-")   # answered 416
    assert (tmp_path / "c.zip").read_bytes() == body


def test_download_http_error_and_checksum_file_validation(tmp_path, loopback):
    with pytest.raises(ValueError, match=r"/zips/nope.zip: HTTP 404"):
        download_file(f"{loopback.url}/zips/nope.zip", tmp_path / "x.zip", progress=False)
    bad = tmp_path / "sums.json"
    bad.write_text(json.dumps({"val2017.zip": "abc"}))
    with pytest.raises(ValueError, match=r"sums.json: entry 'val2017.zip': 'abc' is not an md5"):
        load_checksums(bad)
    bad.write_text(json.dumps({"val2017.zip": {"md5": "A" * 32, "size": 3}}))
    assert load_checksums(bad) == {"val2017.zip": {"md5": "a" * 32, "size": 3}}
