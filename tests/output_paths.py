"""What every command does with an output path it cannot use, or one that exists: a table from real runs.

    python tests/output_paths.py [--work DIR] [--only COMMAND ...] [--json OUT]

Each case runs a command in this process (``ssd_mnv1.cli.run(main, argv)``, as ``python -m`` runs
it) on small generated inputs: a file where a folder is wanted (or a folder where a file is), a
path under a file, a read-only folder, a full disk, and an output that exists (the command run
twice). A read-only folder is ``chmod 555``, or for root (who may write there anyway) a read-only
tmpfs; a full disk is a 256 KiB tmpfs filled to the last byte (root only: both need ``mount``;
the case is left out where that is not possible). ``convert`` needs ST's ``.h5``
(``../shared/reference``, or ``$SSD_MNV1_SHARED``); without it its case that runs to the end is
left out. ``footprint`` writes a file only with ``--json`` (the budget of ``--size``).

For each case: the exit status, the ``error:`` lines (a failure must give exactly one, naming the
path, and no traceback) and the temporary or partial files left behind (there must be none).
Prints a Markdown table (command | case | exit | message; docs/cli.md holds it) and one JSON line.
``tests/test_output_paths.py`` runs the same cases and asserts what the table shows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import SHARED
#: Files whose names say they are temporary or partial: none may be left after a run.
LEFTOVER_SUFFIXES = (".tmp", ".part", ".old")


# ------------------------------------------------------------------------------------ inputs


@dataclass
class Inputs:
    """The small generated inputs every command runs on, under ``root``."""

    root: Path
    checkpoint: Path
    images: Path
    dataset: Path
    coco: Path
    h5: Path | None

    def place(self, name: str) -> Path:
        """A fresh folder for one case."""
        folder = self.root / "cases" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder


def make_inputs(root: Path) -> Inputs:
    """A random 128 px checkpoint, one image, a 2-image synthetic dataset and a 1-image COCO 2017 split."""
    import numpy as np
    from PIL import Image

    from ssd_mnv1 import build_model
    from ssd_mnv1.checkpoint import save_checkpoint
    from ssd_mnv1.training.synthetic import write_synthetic_dataset

    root.mkdir(parents=True, exist_ok=True)
    inputs = root / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    (inputs / "images").mkdir(parents=True)
    checkpoint = save_checkpoint(build_model(input_size=128), inputs / "model.ckpt")
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(inputs / "images" / "a.jpg")
    dataset = inputs / "dataset"
    write_synthetic_dataset(dataset, ["person"], 2, size=64, progress=False)
    coco = inputs / "coco2017"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    Image.fromarray(pixels).save(coco / "val2017" / "000000000001.jpg")
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 4, 20, 30], "area": 600,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}]}))
    h5 = SHARED / "reference" / "st_ssd_mobilenet_v1_025_192" / "st_ssd_mobilenet_v1_025_192.h5"
    return Inputs(root, checkpoint, inputs / "images", dataset, coco, h5 if h5.is_file() else None)


# ------------------------------------------------------------------------------------ commands


@dataclass
class Command:
    """A command and how to run it with output path ``P``: ``argv(inputs, P)``; ``wants``: file or folder."""

    label: str
    module: str
    wants: str
    argv: Callable[[Inputs, Path], list[str]]
    #: whether it can run to the end here (ST's .h5 for convert)
    runs: Callable[[Inputs], bool] = lambda inputs: True
    #: an existing output: "replaced" (atomically) or "refused"
    existing: str = "replaced"
    #: what a second run into the same output does, when it succeeds
    again: str = "replaced atomically"
    #: the output's name in the cases
    leaf: str = "out"
    slow: bool = False

    @property
    def name(self) -> str:
        """The command's name (``predict``, ``export``, ...)."""
        return self.label.split()[0]


def _fit_argv(inputs: Inputs, out: Path) -> list[str]:
    from ssd_mnv1.fit import packaged_config

    return ["fit", "--config", str(packaged_config("quickstart.yaml")), "--trainer.default_root_dir", str(out),
            "--trainer.logger", "false", "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false",
            "--data.synthetic_train", "4", "--data.synthetic_val", "2", "--model.input_size", "128"]


COMMANDS = (
    Command("predict --out", "ssd_mnv1.predict", "folder",
            lambda i, p: [str(i.checkpoint), str(i.images), "--out", str(p)]),
    Command("evaluate --json", "ssd_mnv1.evaluate", "file",
            lambda i, p: [str(i.checkpoint), "--data", str(i.dataset), "--json", str(p), "--workers", "0",
                          "--threads", "1"], leaf="eval.json"),
    Command("prepare_data --out", "ssd_mnv1.prepare_data", "folder",
            lambda i, p: ["--coco", str(i.coco), "--split", "val2017", "--out", str(p), "--quiet"],
            again="images already there reused, labels and annotations.json replaced atomically: a rerun "
                  "resumes; an --out holding other files is refused"),
    Command("synthetic --out", "ssd_mnv1.synthetic", "folder",
            lambda i, p: ["--out", str(p), "--classes", "sign", "--images", "2", "--size", "64", "--quiet"],
            existing="refused"),
    Command("convert OUT", "ssd_mnv1.convert", "file", lambda i, p: [str(i.h5 or i.root / "ST.h5"), str(p)],
            runs=lambda i: i.h5 is not None, leaf="st.ckpt"),
    Command("reproduce --out", "ssd_mnv1.reproduce", "file",
            lambda i, p: ["--reference-dir", str(i.root / "no_reference"), "--data", str(i.dataset), "--out", str(p)],
            runs=lambda i: False, leaf="table.md"),
    Command("export --out", "ssd_mnv1.export.__main__", "folder",
            lambda i, p: [str(i.checkpoint), "--to", "onnx", "--out", str(p)], slow=True),
    Command("footprint --json", "ssd_mnv1.footprint", "file",
            lambda i, p: ["--size", "128", "--json", str(p)], leaf="budget.json", slow=True),
    Command("fit --trainer.default_root_dir", "ssd_mnv1.fit", "folder", _fit_argv, slow=True,
            again="the folder is used again: last.ckpt, config.yaml and fit_report.json replaced atomically; "
                  "a best checkpoint of the same name gets a -v1 suffix"),
)


# ------------------------------------------------------------------------------------ running


@dataclass
class Outcome:
    code: int
    errors: list[str]
    traceback: str | None
    #: temporary or partial files left under the case's folder
    leftovers: list[str] = field(default_factory=list)
    #: files the run added under the case's folder
    new_files: list[str] = field(default_factory=list)


def run_command(command: Command, inputs: Inputs, out: Path) -> Outcome:
    """Run ``command`` in this process with output ``out``: exit status, ``error:`` lines, traceback."""
    import importlib

    from ssd_mnv1.cli import run

    main = importlib.import_module(command.module).main
    err, trace = io.StringIO(), None
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            run(main, command.argv(inputs, out))
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        except Exception:  # noqa: BLE001 - a traceback is what the table must show
            code, trace = 1, traceback.format_exc()
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    return Outcome(code, errors, trace)


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files (and folders) under ``folder``."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith(LEFTOVER_SUFFIXES))


@contextlib.contextmanager
def small_filesystem(where: Path, *, read_only: bool = False, full: bool = False) -> Iterator[bool]:
    """A 256 KiB tmpfs at ``where``, read-only or filled to the last byte; yields False where it
    cannot be mounted (not root, or no ``mount`` here)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k" + (",ro" if read_only else ""), "tmpfs", str(where)],
        capture_output=True).returncode == 0
    try:
        if mounted and full:
            with contextlib.suppress(OSError), open(where / "filler", "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * 512)
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def read_only_folder(where: Path) -> Iterator[bool]:
    """``where`` without write permission (``chmod 555``; for root a read-only tmpfs)."""
    if os.geteuid() == 0:
        with small_filesystem(where, read_only=True) as ok:
            yield ok
        return
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o555)
    try:
        yield True
    finally:
        where.chmod(0o755)


@dataclass
class Case:
    command: Command
    name: str
    #: the path the message must name (the output given to the command)
    path: Path
    outcome: Outcome | None  # None: could not be set up here
    expect: str  # "error", "replaced" or "refused"
    note: str = ""


def run_case(command: Command, name: str, inputs: Inputs) -> Case:
    """One case (see :data:`CASE_NAMES`) of ``command``."""
    folder = inputs.place(f"{command.name}-{name.replace(' ', '_')}")
    out = folder / command.leaf
    if name == "wrong kind":
        if command.wants == "file":
            out.mkdir()
        else:
            out.write_text("a file, not a folder\n")
        return Case(command, name, out, _run(command, inputs, out, folder), "error")
    if name == "under a file":
        (folder / "blocker").write_text("a file\n")
        out = folder / "blocker" / command.leaf
        return Case(command, name, out, _run(command, inputs, out, folder), "error")
    if name == "read-only folder":
        out = folder / "ro" / command.leaf
        with read_only_folder(folder / "ro") as ok:
            return Case(command, name, out, _run(command, inputs, out, folder) if ok else None, "error")
    if name == "full disk":
        out = folder / "fs" / command.leaf
        if not command.runs(inputs):
            return Case(command, name, out, None, "error", "needs ST's files")
        with small_filesystem(folder / "fs", full=True) as ok:
            return Case(command, name, out, _run(command, inputs, out, folder) if ok else None, "error")
    if name == "existing output":
        if not command.runs(inputs):
            return Case(command, name, out, None, command.existing, "needs ST's files")
        first = _run(command, inputs, out, folder)
        if first.code != 0:
            return Case(command, name, out, first, command.existing, "the first run failed")
        return Case(command, name, out, _run(command, inputs, out, folder), command.existing)
    raise ValueError(f"unknown case {name!r}")


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _run(command: Command, inputs: Inputs, out: Path, folder: Path) -> Outcome:
    """:func:`run_command`, with the files it added under ``folder`` and the temporary ones left there."""
    before = _files(folder)
    outcome = run_command(command, inputs, out)
    outcome.new_files = sorted(_files(folder) - before)
    outcome.leftovers = leftovers(folder)
    return outcome


#: The cases, in table order.
CASE_NAMES = ("wrong kind", "under a file", "read-only folder", "full disk", "existing output")


def problems(case: Case) -> list[str]:
    """What is wrong with a case's outcome (empty: as it should be)."""
    o = case.outcome
    if o is None:
        return []
    found = []
    if o.traceback:
        found.append(f"traceback: {o.traceback.strip().splitlines()[-1]}")
    if o.leftovers:
        found.append(f"left behind: {', '.join(o.leftovers)}")
    if case.expect == "replaced":
        if o.code != 0:
            found.append(f"exit {o.code}, expected 0")
        return found
    if o.code != 2:
        found.append(f"exit {o.code}, expected 2")
    if o.new_files:
        found.append(f"wrote {', '.join(o.new_files)}")
    if len(o.errors) != 1:
        found.append(f"{len(o.errors)} error lines, expected 1")
    elif str(case.path) not in o.errors[0]:
        found.append(f"the error does not name {case.path}")
    return found


def describe(case: Case, root: Path) -> str:
    """The table's message cell: the error line, the case folder shortened to ``WORK``."""
    o = case.outcome
    if o is None:
        return f"(not run here: {case.note or 'needs root and mount'})"
    if o.traceback:
        return "traceback: " + o.traceback.strip().splitlines()[-1]
    text = o.errors[0] if o.errors else (f"({case.command.again})" if o.code == 0 else "(no error line)")
    return text.replace(str(root / "cases") + os.sep, "WORK/")


def table(cases: list[Case], root: Path) -> list[str]:
    lines = ["| command | case | exit | message |", "|---|---|---|---|"]
    for case in cases:
        code = "–" if case.outcome is None else str(case.outcome.code)
        label = {"wrong kind": "a folder as the file" if case.command.wants == "file" else "a file as the folder"}.get(
            case.name, case.name)
        message = describe(case, root).replace("|", "\\|")
        lines.append(f"| `{case.command.label}` | {label} | {code} | {message} |")
    lines.append("| `footprint MODEL` | – | – | writes no file (prints its tables only) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, deleted)")
    parser.add_argument("--only", nargs="+", metavar="COMMAND", help="only these commands (predict, fit, ...)")
    parser.add_argument("--json", help="also write the cases here")
    args = parser.parse_args(argv)

    from ssd_mnv1.export.tf_stage import quiet_tensorflow
    from ssd_mnv1.fileio import atomic_write_text

    quiet_tensorflow()
    with contextlib.ExitStack() as stack:
        root = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="output_paths.")))
        inputs = make_inputs(root)
        commands = [c for c in COMMANDS if not args.only or c.name in args.only]
        cases = []
        for command in commands:
            for name in CASE_NAMES:
                case = run_case(command, name, inputs)
                cases.append(case)
                print(f"  {command.label}: {name}: {describe(case, root)}", file=sys.stderr, flush=True)
        print("\n".join(table(cases, root)))
        report = [{"command": c.command.label, "case": c.name, "expect": c.expect,
                   "exit": None if c.outcome is None else c.outcome.code,
                   "message": describe(c, root), "problems": problems(c)} for c in cases]
    print(json.dumps({"root": os.geteuid() == 0, "cases": report,
                      "problems": sum(bool(r["problems"]) for r in report)}))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
