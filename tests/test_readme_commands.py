"""Documented commands are tested commands: every ```bash block of README.md (and docs/*.md) runs here.

The commands are read from the Markdown itself (``readme_commands``), never copied. Each block is one
journey: its commands run in order in one fresh working folder (with ``lightning_configs`` and
``bench`` linked in, so the README's relative paths work), ``python`` being this interpreter. Three
small tables below make it a test:

* ``PLACEHOLDERS``: the UPPERCASE words the blocks may use, each built as a small real input (16
  COCO person images, ST's files from ../shared/reference, ...). A block using a placeholder-looking
  word not in this table fails, so a new placeholder is added here on purpose; a block whose inputs
  are not present (no ../shared) is skipped.
* ``SHORTEN``: flags appended per command kind so that it runs in seconds (2 steps, 8 images, ...).
* ``EXPECT``: what each kind must leave behind besides exit status 0 (checkpoints, files, an ST-AP
  in [0, 100], ...). A command of a kind in neither table fails the fast
  ``test_readme_commands_are_all_known`` until it gets its row.

The quickstart (``python -m ssd_mnv1.fit``) and the set-up lines (venv, pip install, pytest) are not
run here: ``.ci/run`` runs them in full, and the test asserts that it does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import SHARED
from readme_commands import (Block, command_kind, ci_runs, looks_like_placeholder, option, option_values,
                             parse_markdown, placeholder_words, positionals, repo_blocks, substitute)

from ssd_mnv1.preprocess import IMAGE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]
CI_SCRIPT = REPO / ".ci" / "run"
REFERENCE = SHARED / "reference"
#: Kinds that .ci/run runs in full (checked against the script, not run here).
CI_ONLY = ("set-up", "quickstart")
#: Links in each journey's working folder to the repository's folders the commands name.
LINKED = ("lightning_configs", "bench")
TIMEOUT_S = 900


# ---------------------------------------------------------------------------------- placeholders

def _coco_subset(split: str, count: int, out: Path) -> Path:
    """The first ``count`` images of the shared COCO person ``split`` that hold a box, as a COCO
    folder (annotations.json + images/ of links)."""
    src = SHARED / "data" / f"coco2017_person_{split}"
    if not (src / "annotations.json").is_file():
        pytest.skip(f"{src} not present")
    coco = json.loads((src / "annotations.json").read_text())
    boxed = {a["image_id"] for a in coco["annotations"] if not a.get("iscrowd")}
    images = [i for i in coco["images"] if i["id"] in boxed][:count]
    ids = {i["id"] for i in images}
    (out / "images").mkdir(parents=True)
    for image in images:
        (out / "images" / image["file_name"]).symlink_to(src / "images" / image["file_name"])
    subset = {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    (out / "annotations.json").write_text(json.dumps(subset))
    return out


def _image_folder(split: str, count: int, out: Path) -> Path:
    """A folder of links to ``count`` JPEGs of the shared COCO person ``split``."""
    return Path(_coco_subset(split, count, out)) / "images"


def _shared_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def _st_file(size: int, kind: str):
    from ssd_mnv1.zoo import st_files

    return lambda out: _shared_file(getattr(st_files(REFERENCE, size), kind))


#: Placeholder -> what it stands for, and how the test makes a small real one in a session folder.
PLACEHOLDERS = {
    "TRAIN": ("a training dataset: 16 COCO person train images", lambda out: _coco_subset("train", 16, out)),
    "VAL": ("a validation dataset: 16 COCO person val images", lambda out: _coco_subset("val", 16, out)),
    "TRAIN_IMAGES": ("a folder of training images: 8 train JPEGs", lambda out: _image_folder("train", 8, out)),
    "IMAGES": ("images to detect in: a folder of 4 val JPEGs", lambda out: _image_folder("val", 4, out)),
    "IMAGENET_224.h5": ("the Keras MobileNet ImageNet backbone",
                        lambda out: _shared_file(REFERENCE / "mobilenet_v1_0.25_224_imagenet.h5")),
    **{f"ST_{s}.h5": (f"ST's {s} .h5", _st_file(s, "h5")) for s in (192, 224, 256)},
    **{f"ST_{s}_int8.tflite": (f"ST's {s} int8 .tflite", _st_file(s, "int8_tflite")) for s in (192, 224, 256)},
}


class ReadmeInputs:
    """Builds each placeholder's input once per session (skipping the test when its source is absent)."""

    def __init__(self, root: Path):
        self.root = root
        self.built: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.built:
            self.built[name] = Path(PLACEHOLDERS[name][1](self.root / re.sub(r"\W", "_", name)))
        return self.built[name]


@pytest.fixture(scope="session")
def readme_inputs(tmp_path_factory) -> ReadmeInputs:
    return ReadmeInputs(tmp_path_factory.mktemp("readme_inputs"))


# ------------------------------------------------------------------------------------- shortening

FIT_SHORT = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--data.batch_size", "4"]
#: Kind -> flags appended to the command (later flags win), so that it runs in seconds. A fit runs one
#: epoch of 2 batches (not --trainer.max_steps: a run stopped by max_steps resumes into an epoch with
#: no validation); its resume, one more.
SHORTEN = {
    "fit": [*FIT_SHORT, "--trainer.max_epochs", "1"],
    "fit resume": [*FIT_SHORT, "--trainer.max_epochs", "2"],
    "fit print_config": [],
    "synthetic": ["--images", "8"],
    "evaluate": ["--limit", "8"],
    "export": [],
    "export.compat": [],
    "predict": [],
    "footprint": ["--runs", "5"],
    "bench/tflm_parity.py": ["--limit", "8"],
}
#: Option present in the command -> more flags appended.
SHORTEN_IF = {"--ledger": ["--ledger-limit", "4", "--no-layer-ledger"]}
#: Kinds that need the export extra (onnx2tf, TensorFlow, LiteRT, onnxruntime).
NEEDS_EXPORT = ("export", "export.compat", "bench/tflm_parity.py")


def shorten(kind: str, words: list[str]) -> list[str]:
    extra = list(SHORTEN[kind])
    for flag, more in SHORTEN_IF.items():
        if flag in words:
            extra += more
    if kind == "footprint" and "--size" in words:  # a budget: its first size only (one export)
        extra += ["--size", option_values(words, "--size")[0]]
    return extra


# ----------------------------------------------------------------------------------- expectations

@dataclass
class Ran:
    """One command as run: its final words, working folder and process."""

    words: list[str]
    cwd: Path
    proc: subprocess.CompletedProcess
    seconds: float

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def path(self, value: str) -> Path:
        return self.cwd / value

    def tail(self) -> str:
        return f"$ {' '.join(self.words)}\nexit {self.proc.returncode}\n{self.output[-6000:]}"


def _in_range(value, what: str, ran: Ran, low: float = 0.0, high: float = 100.0) -> None:
    assert value is not None and low <= float(value) <= high, f"{what} = {value}, not in [{low}, {high}]\n{ran.tail()}"


def _fit_root(ran: Ran) -> Path:
    """``--trainer.default_root_dir``, else the last --config's ``trainer.default_root_dir``."""
    root = None
    for i, word in enumerate(ran.words):
        if word == "--config":
            config = yaml.safe_load(ran.path(ran.words[i + 1]).read_text()) or {}
            root = (config.get("trainer") or {}).get("default_root_dir", root)
    return ran.path(option(ran.words, "--trainer.default_root_dir", root) or ".")


def expect_fit(ran: Ran) -> None:
    last = _fit_root(ran) / "checkpoints" / "last.ckpt"
    assert last.is_file(), f"{last} missing\n{ran.tail()}"
    found = re.search(r"validation ST-AP \([^)]*\): (?:before ([\d.]+) -> after )?([\d.]+)", ran.output)
    assert found, f"no validation ST-AP in the output\n{ran.tail()}"
    for value in found.groups():
        if value is not None:
            _in_range(value, "validation ST-AP", ran)
    report = json.loads((_fit_root(ran) / "fit_report.json").read_text())  # what CI reads of the quickstart
    assert report["st_ap_after"] == pytest.approx(float(found.group(2)), abs=0.005), ran.tail()


def expect_resume(ran: Ran) -> None:
    assert "Restored all states from the checkpoint" in ran.output, ran.tail()
    expect_fit(ran)


def expect_print_config(ran: Ran) -> None:
    config = yaml.safe_load(ran.proc.stdout)
    assert isinstance(config, dict) and {"trainer", "model", "data"} <= set(config), ran.tail()


def expect_synthetic(ran: Ran) -> None:
    out, count = ran.path(option(ran.words, "--out")), int(option(ran.words, "--images"))
    layout = option(ran.words, "--layout", "coco")
    coco = out / "coco" if layout == "both" else out
    if layout in ("coco", "both"):
        assert len(json.loads((coco / "annotations.json").read_text())["images"]) == count, ran.tail()
        assert len(list((coco / "images").iterdir())) == count, ran.tail()
    if layout in ("yolo", "both"):
        yolo = out / "yolo" if layout == "both" else out
        assert len(list((yolo / "images").iterdir())) == count and (yolo / "labels").is_dir(), ran.tail()


def expect_evaluate(ran: Ran) -> None:
    report = option(ran.words, "--json")
    if report:
        values = {k: v for k, v in json.loads(ran.path(report).read_text()).items() if k.startswith("st_ap")}
        assert values, f"no st_ap in {report}\n{ran.tail()}"
        for key, value in values.items():
            _in_range(value, f"{report}: {key}", ran)
    else:
        found = re.search(r"ST-AP \([^)]*\)\s+([\d.]+)", ran.proc.stdout)
        assert found, f"no ST-AP printed\n{ran.tail()}"
        _in_range(found.group(1), "ST-AP", ran)


SUFFIX = {"onnx": ".onnx", "onnx-qdq": ".onnx", "tflite-fp32": ".tflite", "tflite-int8": ".tflite"}


def expect_export(ran: Ran) -> None:
    out = ran.path(option(ran.words, "--out")).resolve()
    for target in option_values(ran.words, "--to") or ["tflite-int8"]:
        found = re.search(rf"^{re.escape(target)}: (\S+) \(", ran.proc.stdout, re.M)
        assert found, f"the export reports no {target} file\n{ran.tail()}"
        path = ran.path(found.group(1)).resolve()
        assert path.is_file() and path.parent == out and path.suffix == SUFFIX[target], f"{path}\n{ran.tail()}"
        if "--mcu" in ran.words and target.startswith("tflite"):
            int8out = "--int8-outputs" in ran.words and target == "tflite-int8"
            assert path.name.endswith("_mcu_int8out.tflite" if int8out else "_mcu.tflite"), path
        if "--int8-outputs" in ran.words and target == "tflite-int8":
            from ssd_mnv1.tflite_file import read

            graph = read(path).main
            assert [graph.tensors[i].type_name for i in graph.outputs] == ["INT8", "INT8"], ran.tail()
    if "--ledger" in ran.words:
        ledger = json.loads((out / "ledger.json").read_text())
        assert ledger["stages"], ran.tail()
        for stage in ledger["stages"]:
            _in_range(stage["st_ap_20"], f"ledger {stage['stage']} ST-AP", ran)


def expect_compat(ran: Ran) -> None:
    # Exit 1 (differences) is a failure here: every block's file must have the contract it checks.
    assert re.search(r"^compatible", ran.proc.stdout, re.M), ran.tail()


def expect_predict(ran: Ran) -> None:
    inputs = positionals(ran.words, 3, lists=("--classes",))[1:]  # after the model
    images = 0
    for item in map(ran.path, inputs):
        images += sum(p.suffix.lower() in IMAGE_SUFFIXES for p in item.iterdir()) if item.is_dir() else 1
    out = ran.path(option(ran.words, "--out"))
    assert images and len(list(out.glob("*.png"))) == images, f"{images} images\n{ran.tail()}"
    assert [json.loads(p.read_text()) for p in out.glob("*.json")], f"no JSON in {out}\n{ran.tail()}"


def expect_footprint(ran: Ran) -> None:
    if "--size" in ran.words:  # a budget: the JSON table, one row per size, TFLM's arena in it
        result = json.loads(ran.proc.stdout.strip().splitlines()[-1])
        sizes = [b["input_size"] for b in result["budgets"]]
        assert sizes == [int(v) for v in option_values(ran.words, "--size")], ran.tail()
        for budget in result["budgets"]:
            assert budget["arena_bytes"] == budget["head_bytes"] + budget["tail_bytes"] > 0, ran.tail()
            assert budget["fits_ram"] == (budget["arena_with_margin_bytes"] <= result["ram_kib"] * 1024), ran.tail()
        return
    rows = {"peak activation memory": r"peak activation memory[^|]*\|\s*([\d.]+) KiB"}
    if positionals(ran.words, 3)[0].endswith("_mcu.tflite"):
        rows["TFLite Micro arena"] = r"TFLite Micro arena[^|]*\|\s*([\d.]+) KiB"
    for what, pattern in rows.items():
        found = re.search(pattern, ran.proc.stdout)
        assert found, f"no {what} figure\n{ran.tail()}"
        _in_range(found.group(1), what + " (KiB)", ran, 1.0, 1e5)


def expect_tflm_parity(ran: Ran) -> None:
    result = json.loads(ran.proc.stdout.strip().splitlines()[-1])
    assert result["st_ap"], ran.tail()
    for runtime, values in result["st_ap"].items():
        for metric, value in values.items():
            _in_range(value, f"{runtime} {metric}", ran)


#: Kind -> check of what the command promises (after exit status 0).
EXPECT = {
    "fit": expect_fit,
    "fit resume": expect_resume,
    "fit print_config": expect_print_config,
    "synthetic": expect_synthetic,
    "evaluate": expect_evaluate,
    "export": expect_export,
    "export.compat": expect_compat,
    "predict": expect_predict,
    "footprint": expect_footprint,
    "bench/tflm_parity.py": expect_tflm_parity,
}


# ------------------------------------------------------------------------------------------ tests

def block_problems(block: Block) -> list[str]:
    """Why a block cannot run as written (empty: it can)."""
    problems = []
    kinds = []
    for command in block.commands:
        where = f"{block.path}:{command.line}: {command.text}"
        words = command.words
        kind = command_kind(words)
        kinds.append(kind)
        if kind not in CI_ONLY and kind not in EXPECT:
            problems.append(f"{where}\n  no row for command kind {kind!r}: add it to SHORTEN and EXPECT in {__name__}"
                            " (or, for an illustrative fragment, move it out of the ```bash block)")
        unknown = [w for w in placeholder_words(words) if w not in PLACEHOLDERS]
        if unknown:
            problems.append(f"{where}\n  unknown placeholder(s) {unknown}: use one of {sorted(PLACEHOLDERS)} "
                            f"or add it to PLACEHOLDERS in {__name__}")
        if kind == "fit resume" and "fit" not in kinds[:-1]:
            problems.append(f"{where}\n  a resume (--ckpt_path last) needs a fit before it in its block")
    return problems


BLOCKS = repo_blocks(REPO)


def _runs_something(block: Block) -> bool:
    return any(command_kind(c.words) not in CI_ONLY for c in block.commands)


def test_readme_has_blocks_and_all_their_commands_are_known():
    assert len(BLOCKS) >= 2, "no ```bash block found in README.md"
    problems = [p for block in BLOCKS for p in block_problems(block)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if _runs_something(b) else [])
                                   for b in BLOCKS])
def test_readme_block(block: Block, tmp_path: Path, readme_inputs: ReadmeInputs):
    problems = block_problems(block)
    assert not problems, "\n".join(problems)
    kinds = [command_kind(c.words) for c in block.commands]
    for command, kind in zip(block.commands, kinds):
        if kind in CI_ONLY:
            missing = ci_runs(command.text, CI_SCRIPT.read_text())
            assert not missing, f"{block.path}:{command.line}: .ci/run does not run {missing}"
    if not _runs_something(block):
        return
    if any(k in NEEDS_EXPORT for k in kinds):
        pytest.importorskip("onnx2tf")
    values = {name: str(readme_inputs[name]) for c in block.commands for name in placeholder_words(c.words)}
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    timings = []
    for command, kind in zip(block.commands, kinds):
        if kind in CI_ONLY:
            continue
        words = substitute(command.words, values) + shorten(kind, command.words)
        argv = [sys.executable if words[0] == "python" else words[0], *words[1:]]
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        ran = Ran(words, tmp_path, proc, time.perf_counter() - start)
        timings.append(f"{ran.seconds:6.1f} s  {block.path}:{command.line} {kind}")
        assert proc.returncode == 0, f"{block.path}:{command.line} failed\n{ran.tail()}"
        EXPECT[kind](ran)
    print("\n".join(timings))


# ------------------------------------------------------------------------- the parser, on its own

MARKDOWN = """\
# Title

```bash
python -m ssd_mnv1.evaluate ST_224.h5 --data VAL   # a comment
# a whole-line comment

python -m ssd_mnv1.fit fit --config lightning_configs/base.yaml \\
    --data.class_names '[a, b]' --data.train TRAIN \\
    --note "keep # this" --tag a#b
```

```text
python -m ssd_mnv1.evaluate NOT_RUN --data VAL
```

```python
print("not a shell block")
```

```sh
python bench/tflm_parity.py OURS_int8.tflite --data DIR/sub --limit N
python -m ssd_mnv1.fit fit --config ... --ckpt_path last
```
"""


def test_parser_joins_continuations_strips_comments_and_reads_only_shell_blocks():
    blocks = parse_markdown(MARKDOWN, "doc.md")
    assert [b.id for b in blocks] == ["doc.md:L3", "doc.md:L20"]
    first, second = blocks
    assert [c.line for c in first.commands] == [4, 7]
    assert first.commands[0].text == "python -m ssd_mnv1.evaluate ST_224.h5 --data VAL"
    assert first.commands[1].words == [
        "python", "-m", "ssd_mnv1.fit", "fit", "--config", "lightning_configs/base.yaml",
        "--data.class_names", "[a, b]", "--data.train", "TRAIN", "--note", "keep # this", "--tag", "a#b"]
    assert [command_kind(c.words) for c in first.commands] == ["evaluate", "fit"]
    assert [command_kind(c.words) for c in second.commands] == ["bench/tflm_parity.py", "fit resume"]
    assert command_kind(["python", "-m", "ssd_mnv1.fit"]) == "quickstart"
    assert command_kind(["python3", "-m", "venv", ".venv", "&&", "x"]) == "set-up"
    assert command_kind(["ls", "-l"]) == "unknown"


def test_parser_finds_placeholders_and_the_test_refuses_unknown_ones():
    first, second = parse_markdown(MARKDOWN, "doc.md")
    assert placeholder_words(first.commands[0].words) == ["ST_224.h5", "VAL"]
    assert placeholder_words(second.commands[0].words) == ["OURS_int8.tflite", "DIR", "N"]
    assert placeholder_words(second.commands[1].words) == ["..."]
    assert all(looks_like_placeholder(w) for w in ["ST_<S>.h5", "FLOAT.h5_OR.ckpt", "IMAGENET_224.h5"])
    assert not any(looks_like_placeholder(w) for w in ["ModelCheckpoint", "st_224.yaml", "last.ckpt", "16-mixed"])
    assert block_problems(first) == []
    problems = block_problems(second)
    assert len(problems) == 3  # OURS_int8.tflite / DIR / N; "..."; a resume with no fit before it
    assert "unknown placeholder(s) ['OURS_int8.tflite', 'DIR', 'N']" in problems[0]
    assert "['...']" in problems[1] and "needs a fit before it" in problems[2]
    assert positionals(["python", "-m", "ssd_mnv1.predict", "m.tflite", "a", "--classes", "x", "y", "--out", "o",
                        "b.jpg"], 3, lists=("--classes",)) == ["m.tflite", "a", "b.jpg"]
    assert substitute(["--data.train", "TRAIN", "TRAIN_IMAGES/x.jpg", "--w=ST_224.h5", "ST_224_int8.tflite"],
                      {"TRAIN": "/d/t", "TRAIN_IMAGES": "/d/i", "ST_224.h5": "/r/st.h5"}) == [
        "--data.train", "/d/t", "/d/i/x.jpg", "--w=/r/st.h5", "ST_224_int8.tflite"]


def test_parser_refuses_a_dangling_continuation_and_an_unclosed_block():
    with pytest.raises(ValueError, match="continuation"):
        parse_markdown("```bash\npython -m ssd_mnv1.synthetic \\\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        parse_markdown("```bash\npython -m ssd_mnv1.synthetic\n")


def test_ci_check_matches_venv_commands_and_reports_what_ci_does_not_run():
    ci = '#!/bin/sh\npython3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest -q\n' \
         ".venv/bin/python -m ssd_mnv1.fit 2>&1 | tail -n 8\n"
    assert ci_runs("python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m ssd_mnv1.fit", ci) == []
    assert ci_runs("python -m ssd_mnv1.fit", ci) == []
    assert ci_runs(".venv/bin/python -m pytest -q -n 2", ci) == [".venv/bin/python -m pytest -q -n 2"]
