"""Rows held in memory (a list of dicts, a pandas DataFrame, a datasets.Dataset) as a data file.

The Python API writes them once to a content-addressed JSONL file under $CHATTUNE_HOME/inline-data,
so training, lint, the cache and the run dir's config read them through the one data entry point
(data/prepare.py) like any file: line N of that file is row N-1, and errors name it. The same rows
give the same file (and the same data cache key). This module does not read or check rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from chattune.data.sources import DataError

INLINE_FOLDER = "inline-data"


def inline_data_path(data: Any, home: Path | None = None) -> str:
    """`data` as a path: a str/Path is returned as given; rows in memory are written to a JSONL file."""
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    lines = _jsonl_lines(data)
    if home is None:
        from chattune.models import chattune_home

        home = chattune_home()
    return str(write_content_addressed(home / INLINE_FOLDER, lines))


def _jsonl_lines(data: Any) -> Iterator[str]:
    kind = type(data).__module__.split(".")[0] + "." + type(data).__name__
    if kind == "pandas.DataFrame":
        text = data.to_json(orient="records", lines=True, force_ascii=False, date_format="iso")
        return _row_lines(json.loads(line) for line in text.splitlines())  # numpy scalars as JSON, one spelling
    if kind in ("datasets.Dataset", "datasets.IterableDataset"):
        return _row_lines(iter(data))
    if isinstance(data, dict):
        raise DataError("data", "a dict is one row; pass a list of rows, a DataFrame, a datasets.Dataset or a path")
    if isinstance(data, Iterable):
        return _row_lines(iter(data))
    raise DataError("data", f"expected a path, a list of dicts, a pandas DataFrame or a datasets.Dataset; "
                    f"got {type(data).__name__}")


def _row_lines(rows: Iterator[Any]) -> Iterator[str]:
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"data[{index}]", f"each row must be a dict, got {type(row).__name__}")
        try:
            yield json.dumps(row, ensure_ascii=False) + "\n"
        except (TypeError, ValueError) as err:
            field = next((k for k, v in row.items() if not _serializable(v)), "?")
            raise DataError(f"data[{index}]", f"field {field!r} is not JSON data ({err})") from None


def _serializable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def write_content_addressed(folder: Path, lines: Iterator[str]) -> Path:
    """Stream `lines` to a temporary file, then rename it to its content's digest (kept if present)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    temporary = folder / f".incoming-{os.getpid()}-{id(lines)}.jsonl"
    rows = 0
    try:
        with temporary.open("w", encoding="utf-8") as out:
            for line in lines:
                digest.update(line.encode("utf-8"))
                out.write(line)
                rows += 1
        if rows == 0:
            raise DataError("data", "no rows: the data given is empty")
        target = folder / f"{digest.hexdigest()[:20]}.jsonl"
        os.replace(temporary, target)  # same content, same name: replacing is harmless
        return target
    finally:
        temporary.unlink(missing_ok=True)
