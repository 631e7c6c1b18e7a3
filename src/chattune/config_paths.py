"""Resolve the relative paths written in a config file against that file's folder; nothing else.

Only the YAML of a config file passes through here: overrides typed on the command line stay
relative to the current directory, and validation is config.py's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PATH_KEYS = (("model", "name"), ("model", "tokenizer"), ("model", "adapter"), ("data", "path"), ("data", "eval_path"),
             ("data", "template"), ("train", "fsdp"), ("train", "deepspeed"))


def anchor_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A relative path written in a config file is looked up next to that file first.

    `chattune train configs/huanhuan.yaml` then finds its data from any directory. A value with
    nothing of that name beside the file (a hub id, builtin:NAME, a path meant from the current
    directory) is left as written; overrides on the command line stay relative to where you run.
    """
    def anchored(value):
        if not isinstance(value, str) or not value or Path(value).is_absolute() or ":" in value:
            return value
        candidate = folder / value
        return str(candidate.resolve()) if candidate.exists() else value

    for section, key in PATH_KEYS:
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raw[section][key] = anchored(raw[section][key])
    sources = raw.get("data", {}).get("sources") if isinstance(raw.get("data"), dict) else None
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict) and "path" in source:
            source["path"] = anchored(source["path"])
    retrieval = raw.get("data", {}).get("retrieval") if isinstance(raw.get("data"), dict) else None
    if isinstance(retrieval, dict) and "corpus" in retrieval:
        retrieval["corpus"] = anchored(retrieval["corpus"])
    return raw
