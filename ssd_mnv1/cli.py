"""Shared command-line plumbing: one clear message and a non-zero exit, never a traceback.

Also the ``ssd-mnv1 COMMAND ...`` console script, which runs the same ``main(argv)`` as
``python -m ssd_mnv1.<module> ...``.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from typing import Callable, NoReturn

from .fileio import OutputError

#: Errors that describe bad input or an output that cannot be written (:mod:`ssd_mnv1.fileio`);
#: anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, OutputError)


def user_message(exc: BaseException) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker, the original one.

    PyTorch re-raises a worker's exception as ``type(exc)("Caught ... in DataLoader worker process
    N.\\nOriginal Traceback ...\\n<module>.<Type>: <message>")``; only the last part is for users.
    """
    text = str(exc)
    if "in DataLoader worker process" not in text or "Original Traceback" not in text:
        return text
    name = re.escape(type(exc).__name__)
    found = list(re.finditer(rf"^(?:[\w.]+\.)?{name}: (.*)", text, flags=re.M | re.S))
    return found[-1].group(1).strip() if found else text


def split_names(values: list[str]) -> list[str]:
    """Names given as separate arguments and/or comma-separated (``--classes person,sign crate``)."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: <message>`` for plain UserWarnings (ours); other categories keep their type and location."""
    stream = sys.stderr if file is None else file
    text = (f"warning: {message}" if category is UserWarning
            else f"warning: {category.__name__}: {message} ({filename}:{lineno})")
    try:
        print(text, file=stream, flush=True)
    except OSError:  # stderr closed: nothing sensible to do with a warning
        pass


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Call ``main(argv)`` and exit with its status; user errors print ``error: ...`` and exit 2.

    Warnings are printed as one ``warning: ...`` line each (no source line), so a count of what
    a reader skipped reads as a message, not as a code excerpt.
    """
    warnings.showwarning = _show_warning
    try:
        status = main(argv)
    except USER_ERRORS as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


#: ``ssd-mnv1 COMMAND``: the module whose ``main(argv)`` runs it, and one line of help. A module is
#: imported only when its command runs, so that ``ssd-mnv1 fit`` never imports TensorFlow.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("ssd_mnv1.fit", "train / validate / test with LightningCLI and YAML configs (alone: the quickstart)"),
    "evaluate": ("ssd_mnv1.evaluate", "ST-AP / COCO metrics of any model file on a COCO or ST YOLO-layout dataset"),
    "export": ("ssd_mnv1.export.__main__", "ONNX, TFLite float32 or int8 TFLite with ST's I/O contract, and a ledger"),
    "predict": ("ssd_mnv1.predict", "draw boxes on images and write the detections as JSON"),
    "reproduce": ("ssd_mnv1.reproduce", "ST's published AP next to ST's files and our port"),
    "footprint": ("ssd_mnv1.footprint", "parameters, MACs, int8 size, peak activations, CPU latency"),
    "convert": ("ssd_mnv1.convert", "ST's detector .h5 -> project checkpoint"),
    "prepare-data": ("ssd_mnv1.prepare_data", "COCO 2017 -> any categories (person by default) in COCO and YOLO layouts"),
    "synthetic": ("ssd_mnv1.synthetic", "write a generated multi-class dataset (person, sign, crate, wheel)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ssd-mnv1 COMMAND [ARGS ...]", "",
             "ST's st_ssd_mobilenet_v1 person detector in PyTorch. `ssd-mnv1 COMMAND --help` gives a",
             "command's options; `python -m ssd_mnv1.<module>` runs the same command.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int | None:
    """Run ``COMMAND``'s ``main`` with the arguments after it.

    ``fit`` hands them to LightningCLI, whose own subcommand is ``fit`` unless they start with
    another one (``ssd-mnv1 fit validate --config ...``); ``ssd-mnv1 fit`` alone is the quickstart.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not args:
        raise ValueError(f"no command given: choose one of {', '.join(COMMANDS)} (ssd-mnv1 --help)")
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}: choose one of {', '.join(COMMANDS)} (ssd-mnv1 --help)")
    module = importlib.import_module(COMMANDS[name][0])
    if name == "fit" and rest and rest[0] not in module.SUBCOMMANDS:
        rest = ["fit", *rest]  # `ssd-mnv1 fit --config X` is LightningCLI's `fit --config X`
    return module.main(rest)


def console() -> NoReturn:
    """The ``ssd-mnv1`` console script."""
    run(main)
