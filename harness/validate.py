"""Checks of command-line values, made before any work starts. Each returns the clean value or raises
ArgumentError with one line that names the option and says what would be accepted."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from harness.errors import ArgumentError

MAX_SEQ_LEN = 1 << 24  # 16M tokens: beyond any profile; larger numbers are typos
MAX_TIMEOUT_S = 7 * 24 * 3600.0
NAME_MAX, PATH_MAX = 255, 4096  # Linux limits; os.pathconf may not answer for a path that does not exist


def unique(values: Iterable) -> list:
    """The values in order, each once (an option given twice means it once)."""
    return list(dict.fromkeys(values))


def positive(value: float | None, option: str, upper: float | None = None, unit: str = "") -> float | None:
    """A finite number > 0 (and <= upper); None passes through."""
    if value is None:
        return None
    bound = f" and at most {upper:g}{unit}" if upper is not None else ""
    if not math.isfinite(value) or value <= 0 or (upper is not None and value > upper):
        raise ArgumentError(f"{option} must be a number greater than 0{bound}, got {value:g}")
    return value


def fraction(value: float | None, option: str) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
        raise ArgumentError(f"{option} is a fraction in 0..1, got {value:g}")
    return value


def seq_len(value: int | None, option: str = "--seq-len") -> int | None:
    if value is not None and not 0 < value <= MAX_SEQ_LEN:
        shown = str(value) if len(str(value)) <= 20 else f"{str(value)[:12]}... ({len(str(value))} digits)"
        raise ArgumentError(f"{option} must be between 1 and {MAX_SEQ_LEN}, got {shown}")
    return value


def choice(value: str, option: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ArgumentError(f"unknown {option.lstrip('-')} {value!r} ({option}); use {', '.join(choices)}")
    return value


def _path_text(value: str, option: str) -> str:
    if not value.strip():
        raise ArgumentError(f"{option} is empty; give a path")
    if "\0" in value:
        raise ArgumentError(f"{option} holds a NUL character")
    if len(os.fsencode(value)) > PATH_MAX:
        raise ArgumentError(f"{option} is too long ({len(value)} characters; a path has at most {PATH_MAX})")
    long = [part for part in Path(value).parts if len(os.fsencode(part)) > NAME_MAX]
    if long:
        raise ArgumentError(f"{option}: the name {long[0][:40]}... is too long (at most {NAME_MAX} bytes)")
    return value


def output_dir(value: str | None, option: str = "--out") -> Path | None:
    """A directory to write into: existing, or creatable under a writable parent."""
    if value is None:
        return None
    path = Path(_path_text(value, option))
    if path.exists() and not path.is_dir():
        raise ArgumentError(f"{option} {path} is a file; give a directory")
    parent = path
    while not parent.exists():  # the nearest existing ancestor decides whether it can be created
        parent = parent.parent
    if not parent.is_dir():
        raise ArgumentError(f"{option} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArgumentError(f"{option} {path}: {parent} is not writable; choose another directory")
    return path


def input_path(value: str, option: str, kind: str = "directory") -> Path:
    """An existing file or directory to read."""
    path = Path(_path_text(value, option))
    if not path.exists():
        raise ArgumentError(f"{option}: no such {kind}: {path}")
    if kind == "directory" and not path.is_dir():
        raise ArgumentError(f"{option} {path} is a file; give a run directory (one holding records/)")
    if kind == "file" and not path.is_file():
        raise ArgumentError(f"{option} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ArgumentError(f"{option} {path} is not readable")
    return path
