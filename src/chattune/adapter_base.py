"""Refuse to put a LoRA adapter on a base model it was not trained on, naming both models.

Two checks. Before any weights load: the base recorded in `adapter_config.json`
(`base_model_name_or_path`, written by peft at training time) against the base about to
load. After the base loads: every LoRA tensor's shape against the module it adapts. Names
are compared leniently (same string, same folder, or folders whose config.json agree), so
a run dir copied to another machine still loads; a refusal needs positive evidence of a
different model. It does not load weights itself; rundir.py's loaders call it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from chattune.rundir import CONFIG, RunDirError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# config.json keys that differ between copies of one model (saved elsewhere, in another dtype)
_VOLATILE = {"_name_or_path", "transformers_version", "dtype", "torch_dtype"}
_LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_(A|B)\.weight")
SHOWN = 3


class AdapterMismatchError(RunDirError):
    """An adapter and a base model that do not belong together."""


def recorded_base(adapter_dir: str | Path) -> str | None:
    """The base model name peft recorded when the adapter was saved (None if unknown)."""
    file = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        return json.loads(file.read_text(encoding="utf-8")).get("base_model_name_or_path") or None
    except (OSError, ValueError):
        return None


def check_adapter_base(adapter_dir: str | Path, base: str) -> None:
    """Before loading: refuse when the recorded base is known to be another model than `base`."""
    recorded = recorded_base(adapter_dir)
    if recorded and _different_models(recorded, base):
        raise AdapterMismatchError(
            f"{adapter_dir}: this adapter was trained on base model {recorded!r}, but the base model "
            f"being loaded is {base!r}. {_what_to_do(adapter_dir)}"
        )


def check_adapter_shapes(adapter_dir: str | Path, model, base: str | None = None) -> None:
    """After loading: every LoRA A/B tensor must fit the in/out size of the module it adapts."""
    file = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not file.is_file():
        return  # a .bin adapter: peft reports size mismatches itself
    from safetensors import safe_open

    plain = model.get_base_model() if hasattr(model, "get_base_model") else model
    problems = []
    with safe_open(str(file), framework="pt") as tensors:
        names = tensors.keys()  # safe_open is not iterable itself
        for key in names:
            match = _LORA_KEY.fullmatch(key)
            if match:
                problem = _misfit(plain, match.group(1), match.group(2), tensors.get_slice(key).get_shape())
                if problem:
                    problems.append(problem)
    if problems:
        base = base or getattr(plain, "name_or_path", None) or "the loaded model"
        shown = "; ".join(problems[:SHOWN]) + (f"; ... {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
        raise AdapterMismatchError(
            f"{adapter_dir}: this adapter (trained on {recorded_base(adapter_dir) or 'an unrecorded base'!r}) "
            f"does not fit the base model being loaded ({base!r}): {shown}. {_what_to_do(adapter_dir)}"
        )


def _misfit(model, name: str, part: str, shape: list[int]) -> str | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return f"module {name} does not exist in the base"
    size = getattr(module, "in_features" if part == "A" else "out_features", None)
    got = shape[1] if part == "A" else shape[0]
    if size is not None and len(shape) == 2 and got != size:
        side = "input" if part == "A" else "output"
        return f"{name} has {side} size {size}, the adapter expects {got}"
    return None


def _different_models(recorded: str, base: str) -> bool:
    if recorded == base:
        return False
    here, there = Path(recorded).expanduser(), Path(base).expanduser()
    if here.is_dir() and there.is_dir():
        if here.resolve() == there.resolve():
            return False
        mine, theirs = _model_config(here), _model_config(there)
        return mine is not None and theirs is not None and mine != theirs
    if _is_hub_id(recorded) and _is_hub_id(base):
        return recorded.lower() != base.lower()
    return False  # one of them is not available here: the shape check after loading decides


def _model_config(folder: Path) -> dict | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: v for k, v in config.items() if k not in _VOLATILE}


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _what_to_do(adapter_dir: str | Path) -> str:
    config = Path(adapter_dir).parent / CONFIG
    where = f"model.name in {config}" if config.is_file() else "the base model"
    return f"Load it on the base it was trained on ({where}), or train a new adapter on this base."
