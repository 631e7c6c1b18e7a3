"""Issue 37 item 4: bad input is one located line and exit 2, never a traceback (in process, no model).

A property test (hypothesis) writes random bad values for every config key into a config file and
runs `chattune train FILE`; another gives the main CLI flags values out of their range. Both must be
refused before any model loads: exit 2, one line on stderr, no traceback. The OSError kinds and
library range errors are driven through the CLI's and the Python API's boundary directly.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import typing

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from chattune.cli import main
from chattune.config import RunConfig
from chattune.config_sections import INT_LIMIT, RetrievalConfig

CASES = {"config": 0, "flags": 0}
JUNK_TEXT = st.text(alphabet="qxz!@#", min_size=1, max_size=6)  # no number, bool word or choice
FAST = settings(max_examples=12, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _keys() -> list[tuple[str, object]]:
    """Every config key (dotted) with its pydantic field, data.retrieval's keys included."""
    keys = []
    for section, field in RunConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += [(f"{section}.{name}", sub) for name, sub in annotation.model_fields.items()]
        else:
            keys.append((section, field))
    keys += [(f"data.retrieval.{name}", sub) for name, sub in RetrievalConfig.model_fields.items()]
    return keys


KEYS = _keys()


def _kinds(annotation) -> set:
    """The plain types and Literal choices a field's annotation allows."""
    if typing.get_origin(annotation) is typing.Literal:
        return {("literal", choice) for choice in typing.get_args(annotation)}
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return set().union(*(_kinds(arg) for arg in typing.get_args(annotation)))
    return {typing.get_origin(annotation) or annotation}


def _out_of_bounds(field) -> list:
    """Values just past the field's gt/ge/lt/le bounds."""
    values = []
    for bound in field.metadata:
        if isinstance(bound, Gt):
            values += [bound.gt, bound.gt - 1]
        elif isinstance(bound, Ge):
            values += [bound.ge - 1, bound.ge - 0.5]
        elif isinstance(bound, Lt):
            values += [bound.lt, bound.lt + 1]
        elif isinstance(bound, Le):
            values += [bound.le + 1, bound.le * 10 + 7]
    return values


def bad_values(field) -> st.SearchStrategy:
    """Values `field` must refuse: wrong shapes for every field, then by type and bounds."""
    kinds = _kinds(field.annotation)
    options = [st.lists(st.integers(), min_size=1, max_size=3),  # no list field holds ints
               st.dictionaries(st.sampled_from(["zz_a", "zz_b"]), st.integers(), min_size=1)]
    scalar = kinds & {int, float, bool, str}
    if kinds & {int, float} and bool not in kinds:
        options.append(JUNK_TEXT)
    if int in kinds and float not in kinds:
        options += [st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)),
                    st.integers(min_value=INT_LIMIT + 1), st.integers(max_value=-INT_LIMIT - 2)]
    if float in kinds:
        options.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    if bool in kinds:
        options += [st.integers(min_value=2), st.just(0.5), JUNK_TEXT]
    if str in kinds and not kinds & {int, float, bool}:
        options.append(st.integers() | st.floats(allow_nan=False) | st.booleans())
    if not scalar and any(isinstance(k, tuple) for k in kinds):  # Literal choices only
        options += [JUNK_TEXT, st.integers()]
    if bounds := _out_of_bounds(field):
        options.append(st.sampled_from(bounds))
    return st.one_of(options)


def _nested(key: str, value) -> dict:
    raw: dict = {}
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def run_cli(argv: list[str]) -> tuple[int, list[str]]:
    """main(argv) in this process: (exit code, the non-empty lines it wrote to stderr and stdout)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, [line for line in (err.getvalue() + out.getvalue()).splitlines() if line.strip()]


def assert_one_line(code: int, lines: list[str], *, names: str | None = None) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    if names:
        assert names in lines[0], lines


@pytest.mark.parametrize("key,field", KEYS, ids=[key for key, _ in KEYS])
def test_every_config_key_refuses_bad_values_in_one_line(key, field, tmp_path):
    config = tmp_path / "bad.yaml"

    @FAST
    @given(value=bad_values(field))
    def refused(value):
        CASES["config"] += 1
        config.write_text(yaml.safe_dump(_nested(key, value)), encoding="utf-8")
        assert_one_line(*run_cli(["train", str(config)]), names=key.rsplit(".", 1)[-1])

    refused()


FLAGS = {  # flag -> a command line it belongs to (positionals that are never reached)
    "--nproc": ["train"], "--n": ["data", "inspect"], "--max-new-tokens": ["chat", "nowhere"],
    "--temperature": ["chat", "nowhere"], "--top-p": ["chat", "nowhere"],
    "--batch-size": ["eval", "nowhere", "--data", "nowhere.jsonl"],
    "--max-tokens": ["serve", "nowhere"], "--max-queue": ["serve", "nowhere"], "--port": ["ui"],
    "--tolerance": ["export", "nowhere", "--out", "nowhere-out"],
}
LOW = {"--nproc": 1, "--n": 0, "--max-new-tokens": 1, "--batch-size": 1, "--max-tokens": 1,
       "--max-queue": 1, "--port": 0}


def bad_flag_value(flag: str) -> st.SearchStrategy:
    if flag in LOW:
        too_high = 65535 if flag == "--port" else 2**31 - 1
        return st.integers(max_value=LOW[flag] - 1) | st.integers(min_value=too_high + 1)
    nonfinite = st.sampled_from([math.nan, math.inf, -math.inf])
    if flag == "--top-p":
        return st.floats(max_value=0.0, allow_nan=False) | st.floats(min_value=1.0001) | nonfinite
    if flag == "--tolerance":
        return st.floats(max_value=0.0, allow_nan=False) | nonfinite
    return st.floats(max_value=-1e-9, allow_nan=False) | nonfinite  # --temperature


@pytest.mark.parametrize("flag", list(FLAGS))
def test_main_flags_out_of_range_are_one_line_before_any_work(flag):
    @settings(max_examples=25, deadline=None, database=None)
    @given(value=bad_flag_value(flag))
    def refused(value):
        CASES["flags"] += 1
        text = repr(value) if isinstance(value, float) and math.isfinite(value) else str(value)
        assert_one_line(*run_cli([*FLAGS[flag], f"{flag}={text}"]), names=flag)

    refused()


def test_seed_out_of_numpy_range_is_refused_by_the_config(tmp_path):
    """Reproduction 4: seed=-1, 2**32 and 1e20 gave numpy's ValueError as a traceback."""
    from chattune.api import resolve_config
    from chattune.config import ConfigError

    for value in ("-1", str(2**32), "1e20"):
        assert_one_line(*run_cli(["train", f"seed={value}"]), names="'seed'")
    for value in (-1, 2**32, 1e20):
        with pytest.raises(ConfigError, match="'seed'"):
            resolve_config(seed=value)
    assert resolve_config(seed=2**32 - 1).seed == 2**32 - 1


@pytest.mark.parametrize("err,said", [
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/file/out"), "/x/file/out: a file where"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/out"), "/root/out: permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "/mnt/ro/run: read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/run"), "/full/run: no space left"),
    (ValueError("Seed must be between 0 and 2**32 - 1"), "a value out of range: Seed must be between"),
])
def test_os_and_range_errors_are_one_line_in_the_cli_and_the_api(err, said, monkeypatch):
    from chattune import commands, errors

    def fails(args):
        raise err

    monkeypatch.setitem(commands.HANDLERS, "runs", fails)
    assert_one_line(*run_cli(["runs"]), names=said)
    with pytest.raises(errors.InputError, match=said.split(": ", 1)[-1]) as caught:
        errors.located(fails)(None)
    assert caught.value.__cause__ is err and "\n" not in str(caught.value)


def test_a_bug_keeps_its_traceback(monkeypatch):
    from chattune import commands

    def fails(args):
        raise KeyError("a bug")

    monkeypatch.setitem(commands.HANDLERS, "runs", fails)
    with pytest.raises(KeyError):
        main(["runs"])


def test_report_the_number_of_cases(request):
    """Runs last in this file: the property tests' case counts, for the issue's closing note."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"error boundary property tests: {CASES['config']} config cases over {len(KEYS)} keys, " \
           f"{CASES['flags']} flag cases over {len(FLAGS)} flags"
    if reporter is not None:
        reporter.write_line(line)
    print(line)
