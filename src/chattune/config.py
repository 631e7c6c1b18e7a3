"""Typed run configuration: load YAML + dotted overrides into a validated RunConfig.

This module knows nothing about torch, models or data files; it only defines what a run
may be told and refuses anything else with an error that names the key and what is allowed.
The sections (model, data, lora, train) are defined in config_sections.py and importable here.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from chattune.config_paths import anchor_paths
from chattune.config_sections import (
    BUILTIN_DATA,
    BUILTIN_MODEL,
    LORA_INITS,
    OPTIMIZERS,
    DataConfig,
    DataSource,
    LoraConfig,
    ModelConfig,
    Section,
    TrainConfig,
)

__all__ = [
    "BUILTIN_DATA", "BUILTIN_MODEL", "LORA_INITS", "OPTIMIZERS", "ConfigError", "DataConfig", "DataSource",
    "LoraConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config", "validate_config",
]


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class RunConfig(Section):
    """A whole run: its name and place, the seed, and one section per stage."""

    name: str = Field("run", description="run name: the run dir's folder prefix (letters, digits, '.', '_', '-')")
    output_dir: str = Field("runs", description="parent folder of run dirs")
    run_dir: str | None = Field(None, description="exact run dir (default OUTPUT_DIR/NAME-TIMESTAMP)")
    seed: int = Field(42, ge=0, le=2**32 - 1,
                      description="seeds data order, the eval split and the adapter's init "
                      "(0 to 2**32 - 1)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError("use letters, digits, '.', '_' or '-' (it becomes a folder name)")
        return value

    @model_validator(mode="after")
    def _adapter_fits_quantization(self):
        init = self.lora.init
        if self.model.quantize != "none" and (init.startswith("pissa") or init == "olora"):
            raise ValueError(
                f"lora.init={init} rewrites the base weights (W - BA), which a {self.model.quantize} base cannot "
                "hold exactly; use lora.init=default/gaussian with model.quantize, or model.quantize=none"
            )
        return self

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path(self.output_dir) / f"{self.name}-{stamp}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults), apply `a.b=value` overrides, validate."""
    raw = read_config_file(path) if path else {}
    for item in overrides or []:
        _apply_override(raw, item)
    return validate_config(raw, source=str(path) if path else "defaults")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config as a raw mapping, its relative paths anchored at the file's folder (unvalidated)."""
    return anchor_paths(_read_yaml(Path(path)), Path(path).parent)


def set_dotted(raw: dict[str, Any], key: str, value: Any, what: str | None = None) -> None:
    """raw[a][b] = value for key "a.b"; a part that is a value, not a section, is a ConfigError."""
    what = what or f"key {key!r}"
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{what}: write the key as section.key, e.g. train.epochs")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: {part!r} is not a section")
    node[parts[-1]] = value


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: write it as section.key=value, e.g. train.epochs=2")
    set_dotted(raw, key, _override_value(key.strip().split("."), text), what=f"override {item!r}")


def parse_override_value(key: str, text: str) -> Any:
    """The value `key=text` sets on the command line (the web UI's form fields read the same way)."""
    return _override_value(key.strip().split("."), text)


def _override_value(parts: list[str], text: str) -> Any:
    """YAML for typed values (numbers, lists, mappings); text keys keep the text as written.

    `data.prompt=Text: {text}` is a prompt, not the YAML mapping {Text: {text: null}}.
    """
    if not text.strip():
        return None
    if _is_text_key(parts):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # validation then names the key and what it allows


def _is_text_key(parts: list[str]) -> bool:
    import typing

    fields = RunConfig.model_fields
    for part in parts[:-1]:
        section = fields.get(part)
        fields = getattr(section.annotation, "model_fields", {}) if section else {}
    field = fields.get(parts[-1])
    if field is None:
        return False
    kinds = set(typing.get_args(field.annotation)) or {field.annotation}
    return kinds <= {str, type(None)}


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"] if not str(p).startswith("function-")]
        key = ".".join(loc)
        if problem["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}'{_suggest(loc)}")
        elif isinstance(problem.get("input"), dict):  # a check across keys of a section (or of sections)
            lines.append(f"  - {key + ': ' if key else ''}{problem['msg'].removeprefix('Value error, ')}")
        else:
            got = problem.get("input")
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"  - '{key}': {message} (got {got!r}){_allowed(loc)}")
    return "\n".join(lines)


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _suggest(loc: list[str]) -> str:
    model = _section_model(loc)
    if model is None:
        return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} Allowed here: {', '.join(known)}"


def _allowed(loc: list[str]) -> str:
    model = _section_model(loc)
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None or not field.description:
        return ""
    return f"; expected {field.description}"
