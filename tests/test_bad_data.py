"""The bad-data corpus (tests/data/bad/expected.yaml) through the path `chattune train` takes
before any model loads: one clear error naming file:line:field, or a counted warning, and
data.on_error=skip leaving out (and counting) exactly the row-level cases."""

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from chattune.cli import main
from chattune.config import load_config
from chattune.data.formats import DataError
from chattune.data.prepare import prepare_data

BAD = Path(__file__).parent / "data" / "bad"
CASES = yaml.safe_load((BAD / "expected.yaml").read_text(encoding="utf-8"))
ROW_CASES = sorted(name for name, case in CASES.items() if case.get("level") == "row")
MODEL_MISSING = "no such folder"  # what reaching the model load says: the model path does not exist


def case_path(name: str, tmp_path: Path) -> Path:
    if name == "huge_row.jsonl":  # 10 MB in one answer, made here rather than committed
        path = tmp_path / name
        rows = [{"instruction": "Say 'word' many times.", "output": "word " * (2 * 2**20)},
                {"instruction": "Who are you?", "output": "I am Tuna."}]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    return BAD / name


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=1000)


def expand(texts, path: Path) -> list[str]:
    return [text.replace("FILE", str(path)) for text in texts]


def test_every_stored_case_is_described():
    stored = {p.name for p in BAD.iterdir() if p.name != "expected.yaml"}
    assert stored == set(CASES) - {"does_not_exist.jsonl", "huge_row.jsonl"}
    assert not (BAD / "does_not_exist.jsonl").exists()


@pytest.fixture
def train_cli(tmp_path, builtin_tokenizer_dir, capsys, monkeypatch):
    """`chattune train` on a data file with a model path that does not exist (tokenizer borrowed)."""
    monkeypatch.setenv("COLUMNS", "1000")  # keep each message on one line

    def run(path: Path, *overrides: str) -> tuple[int, str]:
        code = main(["train", f"data.path={path}", f"model.name={tmp_path / 'no-model-here'}",
                     f"model.tokenizer={builtin_tokenizer_dir}", f"run_dir={tmp_path / 'run'}", *overrides])
        return code, capsys.readouterr().err

    return run


def test_a_run_dir_the_user_made_stays_after_a_failure(tmp_path, train_cli):
    (tmp_path / "run").mkdir()
    code, err = train_cli(case_path(sorted(CASES)[0], tmp_path))
    assert code == 2 and (tmp_path / "run").is_dir()


@pytest.mark.parametrize("name", sorted(CASES))
def test_train_reports_the_case_before_any_model_loads(name, tmp_path, train_cli):
    case, path = CASES[name], case_path(name, tmp_path)
    code, err = train_cli(path)
    assert code == 2
    assert not (tmp_path / "run").exists(), "a run that failed before writing anything leaves no empty run dir"
    if "error" in case:
        assert err.count("error:") == 1, err
        assert f"{expand([case['where']], path)[0]}: " in err
        assert all(text in err for text in expand(case["error"], path)), err
        if case["level"] == "row":
            assert "set data.on_error=skip" in err
        assert MODEL_MISSING not in err, "the data error must come before the model is looked at"
    else:
        assert MODEL_MISSING in err, "usable data: training went on until the (missing) model"
        for text in expand(case.get("warning", []), path):
            assert text in err and f"{expand([case['where']], path)[0]}: " in err


@pytest.mark.parametrize("name", sorted(CASES))
def test_prepare_data_counts_and_skips(name, tmp_path, tokenizer):
    case, path = CASES[name], case_path(name, tmp_path)
    cfg = load_config(None, [f"data.path={path}", "data.on_error=skip"])
    console = quiet_console()
    if case.get("level") == "file":
        with pytest.raises(DataError) as err:
            prepare_data(cfg, tokenizer, console)
        assert str(err.value).startswith(f"{expand([case['where']], path)[0]}: ")
        return
    data = prepare_data(cfg, tokenizer, console)
    stats = data.stats["train"]
    assert len(data.train) == stats["examples"] == case["examples"]
    assert stats["truncated"] == case.get("truncated", 0)
    printed = console.file.getvalue()
    if case.get("level") == "row":
        where = expand([case["where"]], path)[0]
        assert stats["skipped"] == 1 and stats["skip_reasons"] == {case["skip_reason"]: 1}
        assert stats["skipped_rows"][0].startswith(f"{where}: ")
        assert f"skipped {case['skip_reason']}: 1 row(s) skipped (data.on_error=skip), e.g. {where}: " in printed
    else:
        assert stats["skipped"] == 0
    for text in expand(case.get("warning", []), path):
        assert text in printed


@pytest.mark.parametrize("name", ROW_CASES)
def test_skip_mode_lets_train_reach_the_model(name, tmp_path, train_cli):
    code, err = train_cli(case_path(name, tmp_path), "data.on_error=skip")
    assert code == 2 and MODEL_MISSING in err
    assert f"skipped {CASES[name]['skip_reason']}: 1 row(s)" in err
    assert "skipped 1 bad rows" in err  # the split summary counts it too


@pytest.mark.parametrize("name", sorted(CASES))
def test_data_inspect_agrees(name, tmp_path, builtin_tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    case, path = CASES[name], case_path(name, tmp_path)
    code = main(["data", "inspect", f"data.path={path}", f"model.name={tmp_path / 'no-model-here'}",
                 f"model.tokenizer={builtin_tokenizer_dir}", "--n", "0"])
    out = capsys.readouterr()
    where = expand([case["where"]], path)[0] if "where" in case else None
    if case.get("level") == "file":
        assert code == 2 and f"{where}: " in out.err
    elif case.get("level") == "row":
        assert code == 1 and f"{where}: " in out.out and "error" in out.out
    else:
        assert code == 0
        assert all(text in out.out for text in expand(case.get("warning", []), path))


def test_huge_row_is_clipped_before_tokenizing(tmp_path, tokenizer):
    from chattune.data.dataset import clip_length
    from chattune.data.lint import lint_data

    cfg = load_config(None, [f"data.path={case_path('huge_row.jsonl', tmp_path)}"])
    checked = lint_data(cfg.data, tokenizer, cfg.seed)
    answer = checked.train[0].messages[-1]["content"]
    assert len(answer) == clip_length(tokenizer, cfg.data.max_length) < 10 * 2**20
    assert answer == ("word " * (2 * 2**20))[: len(answer)]
    assert not checked.report.errors


def test_every_row_skipped_is_an_error_not_an_empty_run(tmp_path, tokenizer):
    path = tmp_path / "all_bad.jsonl"
    path.write_text('{"instruction": "q", "output": 1}\n{"instruction": "q"}\n', encoding="utf-8")
    cfg = load_config(None, [f"data.path={path}", "data.on_error=skip"])
    with pytest.raises(DataError, match=r"every training row was skipped as bad \(2, data.on_error=skip\)"):
        prepare_data(cfg, tokenizer, quiet_console())


def test_skipped_eval_rows_are_counted_in_the_eval_split(tmp_path, tokenizer, write_jsonl):
    train = write_jsonl([{"instruction": "q", "output": "a"}, {"instruction": "r", "output": "b"}], "train.jsonl")
    held = write_jsonl([{"instruction": "s", "output": "c"}, {"instruction": "t", "output": 2}], "eval.jsonl")
    cfg = load_config(None, [f"data.path={train}", f"data.eval_path={held}", "data.on_error=skip"])
    data = prepare_data(cfg, tokenizer, quiet_console())
    assert data.stats["train"]["skipped"] == 0
    assert data.stats["eval"]["skipped"] == 1 and data.stats["eval"]["examples"] == 1
    assert data.stats["eval"]["skipped_rows"] == [f"{held}:2:output: must be a string, got int 2"]


def test_jsonl_line_with_unicode_line_separator_is_one_row(write_jsonl):
    from chattune.data.formats import load_conversations

    path = write_jsonl([{"instruction": "a\u2028b\u0085c", "output": "d"}])  # raw U+2028 / U+0085 in the file
    (conv,) = load_conversations(path)
    assert conv.messages[0]["content"] == "a\u2028b\u0085c" and conv.source.endswith(":1")


def test_symlink_loop_and_unreadable_file_are_named_as_such(tmp_path, monkeypatch):
    """As root every file is readable, so the permission error is raised the way the OS raises it."""
    from chattune.data.sources import read_rows

    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(tmp_path / "loop.jsonl")
    with pytest.raises(DataError, match=r"loop.jsonl: a symbolic link that leads nowhere"):
        read_rows(loop)
    locked = tmp_path / "locked.jsonl"
    locked.write_text('{"instruction": "q", "output": "a"}\n')

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "open", denied)  # JSONL is read line by line from an open file
    with pytest.raises(DataError, match=r"locked.jsonl: cannot read the file \(permission denied\)"):
        read_rows(locked)


def test_a_finding_every_row_shares_is_reported_once_with_its_count():
    from chattune.data.lint import LintReport

    report = LintReport()
    for line in (1, 2, 3, 4, 5):
        report.row_problem(f"data.jsonl:{line}", "end-of-turn token not trained", "template")
    report.row_problem("data.jsonl:6", "field 'output': missing", "row")
    with pytest.raises(DataError) as caught:
        report.raise_if_errors()
    text = str(caught.value)
    assert "6 error(s)" in text
    assert "5 rows (data.jsonl:1, data.jsonl:2, data.jsonl:3, ...): end-of-turn token not trained" in text
    assert text.count("end-of-turn token not trained") == 1
    assert "data.jsonl:6: field 'output': missing" in text
