"""Every command's output path: a bad one is one ``error:`` line naming it (exit 2, no traceback)
and nothing written; an existing output is replaced atomically, or refused (synthetic).

The cases are ``output_paths``' (``python tests/output_paths.py`` prints the table of
docs/cli.md), run in this process: a file where a folder is wanted (or a folder where a file is), a path under a file, a
read-only folder (``chmod 555``; for root a read-only tmpfs, skipped where ``mount`` is not
allowed), a full disk (a filled tmpfs: root only) and the command run twice into one output.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import output_paths as cases

from ssd_mnv1.fileio import OutputError, atomic_folder, atomic_path, atomic_write_text, output_file, output_folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return cases.make_inputs(tmp_path_factory.mktemp("output_paths"))


@pytest.mark.parametrize("command, name", [
    pytest.param(command, name, id=f"{command.name}-{name.replace(' ', '_')}")
    for command in cases.COMMANDS for name in cases.CASE_NAMES])
def test_output_path(command, name, inputs):
    if command.name == "export":
        pytest.importorskip("onnx")
    case = cases.run_case(command, name, inputs)
    if case.outcome is None:
        pytest.skip(case.note or "needs root and mount here")
    outcome = case.outcome
    assert outcome.traceback is None, outcome.traceback
    assert outcome.leftovers == [], "temporary or partial files left behind"
    if case.expect == "replaced":
        assert outcome.code == 0 and outcome.errors == []
        return
    assert outcome.code == 2
    (line,) = outcome.errors  # exactly one
    assert str(case.path) in line
    assert outcome.new_files == [], "a refused or failed run wrote files"
    assert cases.problems(case) == []


def test_a_refused_existing_output_is_left_as_it_was(inputs):
    (synthetic,) = [c for c in cases.COMMANDS if c.name == "synthetic"]
    case = cases.run_case(synthetic, "existing output", inputs)
    assert case.outcome.code == 2 and "pass --overwrite to replace it" in case.outcome.errors[0]
    assert sorted(p.name for p in case.path.iterdir()) == ["annotations.json", "images"]


# ------------------------------------------------------------------------------- ssd_mnv1.fileio


def test_output_checks_name_the_option_and_the_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(IsADirectoryError, match=rf"^--json {tmp_path}: is a folder, not a file$"):
        output_file(tmp_path, "--json")
    with pytest.raises(NotADirectoryError, match=r"^--out .*/file: exists and is not a folder$"):
        output_folder(tmp_path / "file", "--out")
    with pytest.raises(NotADirectoryError, match=rf"^{tmp_path}/file/a/b.json: {tmp_path}/file is a file, not a folder$"):
        output_file(tmp_path / "file" / "a" / "b.json")
    assert output_file(tmp_path / "new" / "deeper" / "x.json") == tmp_path / "new" / "deeper" / "x.json"
    assert output_folder(tmp_path / "new" / "folder", "--out") == tmp_path / "new" / "folder"
    assert not (tmp_path / "new").exists()  # checks only


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_refused_up_front(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=rf"^--out {folder}/x: cannot write into {folder} \(permission denied\)$"):
            output_folder(folder / "x", "--out")
    finally:
        folder.chmod(0o755)


def _disk_full_after(monkeypatch, nbytes: int) -> None:
    """Writes through ``Path.write_text`` fail with ENOSPC after ``nbytes`` characters."""
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if len(data) > nbytes:
            real(self, data[:nbytes], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def test_a_full_disk_is_one_error_naming_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("earlier\n")
    _disk_full_after(monkeypatch, 3)
    with pytest.raises(OutputError, match=rf"^{target}: cannot write \(No space left on device\); nothing was written$") as info:
        atomic_write_text(target, "a longer text\n")
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]

    out = tmp_path / "dataset"
    with pytest.raises(OutputError, match=rf"^{out}: cannot write \(No space left"):
        with atomic_folder(out) as tmp:
            atomic_write_text(tmp / "images" / "labels.txt", "more than three\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_an_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "a.png") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(tmp_path / "d") as tmp:
            (tmp / "x").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_an_input_error_inside_a_write_keeps_its_own_type(tmp_path):
    # a missing input read while writing is not a write failure: it keeps its type and message
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.txt"):
            open(tmp_path / "missing.txt").close()
    assert list(tmp_path.iterdir()) == []
