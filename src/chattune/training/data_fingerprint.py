"""Fingerprint the encoded training examples; say in words what changed between two fingerprints.

A resumed run continues the data order the Trainer's sampler drew over these exact examples, so a
checkpoint records one short hash per example (its token ids and labels, in training order) and
their digest; `--resume` compares them with the data prepared now (training/resume.py). Token
totals are not enough: an edited row with the same length, or the same rows reordered, keeps them.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from pathlib import Path

ROWS_FILE = "chattune_data.json"  # in a checkpoint: one hash per training example, in order
VERSION = 1
SHOWN = 3  # places named per kind of change


def row_hashes(examples) -> list[str]:
    """One 16-hex-digit hash per example ({input_ids, labels} dicts, or any JSON-ready rows)."""
    hashes = []
    for example in examples:
        if isinstance(example, dict) and "input_ids" in example:
            digest = hashlib.blake2b(digest_size=8)
            digest.update(array("q", example["input_ids"]).tobytes())
            digest.update(b"|")
            digest.update(array("q", example.get("labels") or []).tobytes())
        else:  # preference rows: several id lists per example
            text = json.dumps(example, sort_keys=True, default=str)
            digest = hashlib.blake2b(text.encode(), digest_size=8)
        hashes.append(digest.hexdigest())
    return hashes


def summary_of(hashes: list[str]) -> dict:
    """What chattune_state.json keeps: version, example count, digest of the ordered hashes."""
    digest = hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    return {"version": VERSION, "examples": len(hashes), "digest": digest}


def write_rows(folder: Path, hashes: list[str]) -> None:
    text = json.dumps(hashes, separators=(",", ":"))
    (Path(folder) / ROWS_FILE).write_text(text, encoding="utf-8")


def read_rows(folder: Path) -> list[str] | None:
    try:
        rows = json.loads((Path(folder) / ROWS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return rows if isinstance(rows, list) else None


def describe_change(before: list[str] | None, now: list[str], source=None) -> str:
    """In words, how `now` differs from `before` (rows edited, added, removed, or only their order).

    `source(i)`: where the i-th example of `now` came from (file:line), to name new or edited rows.
    """
    if before is None:
        return "the examples differ (the checkpoint's per-row record is unreadable)"
    old, new = Counter(before), Counter(now)
    if old == new:
        moved = next((i for i, (a, b) in enumerate(zip(before, now, strict=True)) if a != b), 0)
        first = _place(moved, source)
        return f"the same {len(now)} examples in another order (first moved: {first})"
    added, removed = sum((new - old).values()), sum((old - new).values())
    edited = min(added, removed)
    parts = [f"{_rows(edited)} edited"] if edited else []
    parts += [f"{_rows(added - edited)} added"] if added > edited else []
    parts += [f"{_rows(removed - edited)} removed"] if removed > edited else []
    fresh = [i for i, h in enumerate(now) if h not in old][:SHOWN]
    where = f" (new or edited: {', '.join(_place(i, source) for i in fresh)})" if fresh else ""
    return f"{', '.join(parts)}; {len(before)} examples before, {len(now)} now{where}"


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def _place(index: int, source) -> str:
    if source is not None:
        try:
            return str(source(index))
        except (IndexError, KeyError, TypeError, AttributeError):
            pass
    return f"example {index + 1}"
