"""The shell commands of the project's Markdown, read from the Markdown itself.

Every fenced code block tagged ``bash`` (or ``sh`` / ``shell``) in README.md and docs/*.md is a
*journey*: its commands, in order, in one working folder. This module only reads them:

* ``\\``-continued lines are joined, ``# comments`` outside quotes are dropped, one command a line;
* :func:`placeholder_words` finds the words that read as placeholders (UPPERCASE like ``TRAIN`` or
  ``ST_224.h5``, ``<S>`` style, or ``...``), so that a test can refuse the ones it does not know;
* :func:`command_kind` names what a command runs (``fit``, ``evaluate``, ``bench/tflm_parity.py``, ...);
* :func:`ci_runs` says whether a command is one that ``.ci/run`` runs.

``tests/test_readme_commands.py`` runs the journeys, shortened, on small real inputs.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

#: Fence languages whose blocks are shell commands (and so are run by the tests).
SHELL_LANGUAGES = ("bash", "sh", "shell")
#: Tokens that need a shell: a command holding one is never run by the tests.
SHELL_OPERATORS = ("&&", "||", "|", ";", ">", ">>", "<", "2>&1", "&")

_FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
_WORD_SEPARATORS = re.compile(r"[\s/=,:;'\"\[\](){}]+")


@dataclass(frozen=True)
class Command:
    """One command of a block: ``text`` as bash reads it (continuations joined, comment dropped)."""

    line: int
    text: str

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)


@dataclass(frozen=True)
class Block:
    """A fenced shell block of ``path`` whose opening fence is on line ``line`` (1-based)."""

    path: str
    line: int
    commands: tuple[Command, ...]

    @property
    def id(self) -> str:
        return f"{self.path}:L{self.line}"


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` that starts a word, outside quotes)."""
    quote = None
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch == "\\":
            i += 2
            continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


def join_commands(lines: list[tuple[int, str]]) -> list[Command]:
    """Commands of a block's ``(line number, text)`` lines: comments dropped, ``\\`` continuations joined."""
    commands: list[Command] = []
    parts: list[str] = []
    first = None
    for number, raw in lines:
        text = strip_comment(raw)
        if not parts and not text.strip():
            continue
        if first is None:
            first = number
        if text.endswith("\\"):
            parts.append(text[:-1].strip())
            continue
        parts.append(text.strip())
        joined = " ".join(p for p in parts if p)
        if joined:
            commands.append(Command(first, joined))
        parts, first = [], None
    if parts:
        raise ValueError(f"line {first}: the last command ends with a continuation backslash")
    return commands


def parse_markdown(text: str, name: str = "<markdown>") -> list[Block]:
    """Every fenced shell block of a Markdown text, in order (other fenced blocks are skipped)."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language = match.group(1), match.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if j == len(lines):
            raise ValueError(f"{name}:{i + 1}: a ``` block is never closed")
        if language in SHELL_LANGUAGES:
            body = [(n + 1, lines[n]) for n in range(i + 1, j)]
            try:
                commands = join_commands(body)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            blocks.append(Block(name, i + 1, tuple(commands)))
        i = j + 1
    return blocks


def markdown_files(repo: Path) -> list[Path]:
    """README.md and docs/*.md (those that exist)."""
    return [p for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))] if p.is_file()]


def repo_blocks(repo: Path) -> list[Block]:
    """The shell blocks of :func:`markdown_files`, named by their path relative to ``repo``."""
    blocks = []
    for path in markdown_files(repo):
        blocks += parse_markdown(path.read_text(encoding="utf-8"), path.relative_to(repo).as_posix())
    return blocks


def looks_like_placeholder(word: str) -> bool:
    """``TRAIN``, ``ST_224.h5``, ``FLOAT.h5_OR.ckpt``, ``N``, ``<S>``, ``...``: a word the reader must
    replace. A word whose first ``_``/``.``-separated part is UPPERCASE reads as one (``ModelCheckpoint``
    or ``st_224.yaml`` do not)."""
    if "..." in word or "\u2026" in word or re.search(r"<[^<>]*>", word):
        return True
    head = re.split(r"[_.]", word, maxsplit=1)[0]
    return re.fullmatch(r"[A-Z][A-Z0-9]*", head) is not None


def placeholder_words(words: list[str]) -> list[str]:
    """The placeholder-looking words of a command's shell words (paths and ``k=v`` split up)."""
    found = []
    for token in words:
        for word in _WORD_SEPARATORS.split(token):
            if word and looks_like_placeholder(word) and word not in found:
                found.append(word)
    return found


def substitute(words: list[str], values: dict[str, str]) -> list[str]:
    """``words`` with every placeholder of ``values`` (a whole word, as :func:`placeholder_words`
    splits them) replaced by its value."""
    if not values:
        return list(words)
    names = sorted(values, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.<>-])(" + "|".join(map(re.escape, names)) + r")(?![\w.<>-])")
    return [pattern.sub(lambda m: values[m.group(1)], token) for token in words]


def option(words: list[str], name: str, default: str | None = None) -> str | None:
    """The value of the last ``name VALUE`` / ``name=VALUE`` in ``words``."""
    value = default
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith(name + "="):
            value = word[len(name) + 1:]
    return value


def option_values(words: list[str], name: str) -> list[str] | None:
    """The values after the last ``name`` up to the next ``-`` option (``--to a b``), or None."""
    values = None
    for i, word in enumerate(words):
        if word == name:
            values = []
            for value in words[i + 1:]:
                if value.startswith("-"):
                    break
                values.append(value)
    return values


def positionals(words: list[str], start: int, flags: tuple[str, ...] = (), lists: tuple[str, ...] = ()) -> list[str]:
    """The arguments from ``words[start]`` on that are neither options nor option values: an option
    takes one value, none if in ``flags``, every following non-option word if in ``lists``."""
    found = []
    i = start
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-"):
            found.append(word)
        elif word in lists:
            while i < len(words) and not words[i].startswith("-"):
                i += 1
        elif "=" not in word and word not in flags:
            i += 1
    return found


def command_kind(words: list[str]) -> str:
    """What a command runs: ``set-up`` (makes the venv; only ``.ci/run`` runs it), ``quickstart``
    (``python -m ssd_mnv1.fit``, no arguments), the module after ``python -m ssd_mnv1.`` (``fit``
    split into ``fit``, ``fit resume`` and ``fit print_config``), ``bench/NAME.py``, or ``unknown``."""
    if len(words) >= 3 and words[0] == "python3" and words[1:3] == ["-m", "venv"]:
        return "set-up"
    if any(w in SHELL_OPERATORS for w in words) or not words or words[0] != "python":
        return "unknown"
    if words == ["python", "-m", "ssd_mnv1.fit"]:
        return "quickstart"
    if len(words) >= 3 and words[1] == "-m" and words[2].startswith("ssd_mnv1."):
        module = words[2][len("ssd_mnv1."):]
        if module != "fit":
            return module
        sub = words[3] if len(words) > 3 and not words[3].startswith("-") else "fit"
        if "--print_config" in words or any(w.startswith("--print_config=") for w in words):
            return f"{sub} print_config"
        if sub == "fit" and option(words, "--ckpt_path") is not None:
            return "fit resume"
        return sub
    if len(words) >= 2 and re.fullmatch(r"bench/\w+\.py", words[1]):
        return words[1]
    return "unknown"


def _ci_commands(ci_text: str) -> list[list[str]]:
    """The simple commands of a shell script: each ``&&`` part of each line, cut at its first
    redirection or pipe."""
    commands = []
    for line in ci_text.splitlines():
        line = strip_comment(line)
        if not line.strip():
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        part: list[str] = []
        plumbing = False  # after a pipe or redirection: the rest of this part is not the command
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";"):
                if part:
                    commands.append(part)
                part, plumbing = [], False
            elif plumbing:
                continue
            elif word in SHELL_OPERATORS or re.fullmatch(r"\d*>.*", word):
                plumbing = True
            else:
                part.append(word)
    return commands


def _same_command(readme: list[str], ci: list[str]) -> bool:
    """``python`` / ``pip`` match ``.venv/bin/python`` / ``.venv/bin/pip`` (the venv the README made),
    and ``pip install -e .`` matches CI's ``pip install -e ".[extras]"`` (the same project, more extras)."""
    if len(readme) != len(ci) or not readme:
        return False
    if Path(readme[0]).name != Path(ci[0]).name:
        return False
    for a, b in zip(readme[1:], ci[1:]):
        if a != b and not (a == "." and re.fullmatch(r"\.\[[\w,-]+\]", b) and readme[1:3] == ["install", "-e"]):
            return False
    return True


def ci_runs(command: str, ci_text: str) -> list[str]:
    """The ``&&`` parts of ``command`` that the CI script ``ci_text`` does not run (empty: all run)."""
    ci = _ci_commands(ci_text)
    missing = []
    for part in command.split("&&"):
        words = shlex.split(part)
        if not any(_same_command(words, c) for c in ci):
            missing.append(part.strip())
    return missing
