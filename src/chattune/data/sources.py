"""Read one data file or folder into (line, row) pairs: JSON, JSONL, CSV, Parquet, save_to_disk.

Each row keeps the line (CSV, JSON, JSONL) or row number (Parquet, Arrow folders) it came
from, so later errors can name file:line:field. Every problem is a DataError. It does not
interpret rows; formats.py does.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BATCH_ROWS = 10_000  # rows of a Parquet file or saved dataset read at a time


class DataError(ValueError):
    """A data problem located at file:line:field."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where


def read_rows(path: Path, errors: list[DataError] | None = None) -> list[tuple[int, Any]]:
    """Return (line or row number, parsed row) pairs from any supported file or folder.

    A problem confined to one row (a JSONL line that is not JSON or not UTF-8, a CSV row
    with the wrong cell count) raises, unless `errors` is a list: then it is appended and
    the row skipped. Whole-file problems (missing, empty, a broken JSON array) always raise.
    """
    return list(iter_rows(path, errors))


def iter_rows(path: Path, errors: list[DataError] | None = None) -> Iterator[tuple[int, Any]]:
    """read_rows, one row at a time: JSONL is read line by line (never whole, so a file larger than
    memory streams), a saved dataset and Parquet batch by batch; JSON arrays and CSV are read whole."""
    if not path.exists():
        if path.is_symlink():
            raise DataError(str(path), "a symbolic link that leads nowhere (a loop, or its target is missing)")
        raise DataError(str(path), f"file not found; check the path (relative paths start in {Path.cwd()})")
    if path.is_dir():
        yield from _saved_dataset_rows(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    head = _head(path)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}:1", "the file is UTF-16; re-save it as UTF-8")
    if suffix in (".csv", ".tsv"):
        raw = _whole(path)
        yield from _csv_rows(path, _decode(path, raw), delimiter="\t" if suffix == ".tsv" else ",", errors=errors)
    elif suffix == ".jsonl" or not head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
        yield from _jsonl_rows(path, errors)
    else:
        yield from _json_array_rows(path, _decode(path, _whole(path)))


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """The first bytes of the file (to tell its kind); an empty or all-blank file is an error."""
    try:
        with path.open("rb") as handle:
            head = handle.read(size)
            blank = not head.removeprefix(codecs.BOM_UTF8).strip()
            while blank and (more := handle.read(1 << 20)):
                blank = not more.strip()
    except PermissionError:
        raise DataError(str(path), "cannot read the file (permission denied); make it readable (chmod +r) "
                                   "or copy it somewhere you can read") from None
    if blank:
        raise DataError(str(path), "file is empty; it needs at least one row")
    return head


def _whole(path: Path) -> bytes:
    return path.read_bytes().removeprefix(codecs.BOM_UTF8)


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}", f"not UTF-8 (byte {raw[err.start]:#x}); re-save the file as UTF-8") from None


def _row_problem(errors: list[DataError] | None, problem: DataError) -> None:
    if errors is None:
        raise problem
    errors.append(problem)


def _jsonl_rows(path: Path, errors: list[DataError] | None) -> Iterator[tuple[int, Any]]:
    """One JSON value per line, split on \\n only (binary lines): str.splitlines would also cut at U+2028 inside a string."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.removeprefix(codecs.BOM_UTF8) if number == 1 else line
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as err:
                message = f"not UTF-8 (byte {line[err.start]:#x} at byte {err.start + 1} of the line); re-save the file as UTF-8"
                _row_problem(errors, DataError(f"{path}:{number}", message))
            except json.JSONDecodeError as err:
                _row_problem(errors, DataError(f"{path}:{number}", f"invalid JSON ({err.msg} at column {err.colno})"))


_ARRAY_FIX = "fix the file here (a JSON array is read whole; in JSONL, data.on_error=skip can skip a bad line)"


def _json_array_rows(path: Path, text: str) -> list[tuple[int, Any]]:
    """Parse a JSON array element by element so each row keeps its line number."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    rows = []
    line, counted = 1, 0  # newlines are counted once, as pos moves on (a count from 0 each row is quadratic)
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "]":
            return rows
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}", f"invalid JSON ({err.msg} at column {err.colno}); {_ARRAY_FIX}") from None
        line, counted = line + text.count("\n", counted, pos), pos
        rows.append((line, row))
        pos = _skip_space(text, end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            line = text.count("\n", 0, pos) + 1
            raise DataError(f"{path}:{line}", f"invalid JSON (expected ',' or ']' between rows); {_ARRAY_FIX}")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _csv_rows(path: Path, text: str, delimiter: str, errors=None) -> list[tuple[int, Any]]:
    """Rows keyed by the header; a row with a wrong cell count names its line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except csv.Error as err:
        raise DataError(f"{path}:1", f"invalid CSV header ({err})") from None
    other = {",": "\t", "\t": ","}[delimiter]
    if len(header) == 1 and other in header[0]:
        named = {",": "tab-separated (name it .tsv)", "\t": "comma-separated (name it .csv)"}[delimiter]
        raise DataError(f"{path}:1", f"the header has no {delimiter!r} but {other!r}: the file looks {named}")
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise DataError(f"{path}:1", f"the header must name every column once, got {header}")
    rows = []
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return rows
        except csv.Error as err:
            raise DataError(f"{path}:{line}", f"invalid CSV ({err})") from None
        if cells and len(cells) != len(header):
            _row_problem(errors, DataError(f"{path}:{line}", f"{len(cells)} cells but the header has {len(header)} "
                                           "columns; quote cells that contain the delimiter"))
        elif cells:
            rows.append((line, dict(zip(header, cells, strict=True))))
        line = reader.line_num + 1


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(str(path), f"cannot read Parquet ({err})") from None


def _saved_dataset_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """A folder written by `datasets.save_to_disk` (a Dataset, or a DatasetDict's train split), memory-mapped."""
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise DataError(str(path), "is a folder but not one written by datasets.save_to_disk; give a file")
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DataError(str(path), f"saved DatasetDict has no 'train' split (splits: {', '.join(dataset)})")
        dataset = dataset["train"]
    for start in range(0, len(dataset), BATCH_ROWS):
        batch = dataset[start:start + BATCH_ROWS]
        for offset in range(len(next(iter(batch.values()), []))):
            yield start + offset + 1, {name: values[offset] for name, values in batch.items()}
