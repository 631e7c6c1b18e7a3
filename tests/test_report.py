"""report.html, `chattune runs` and `chattune compare` on hand-made run dirs (no model needed)."""

import base64
import json
import re

import pytest
from rich.console import Console

from chattune.cli import main
from chattune.config import load_config
from chattune.report.html import highlight, write_report
from chattune.report.runs import compare_runs, print_runs, runs_rows
from chattune.rundir import REPORT

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(parent, name, losses, best=None, evals=()):
    run = parent / name
    (run / "adapter").mkdir(parents=True)
    cfg = load_config(None, [f"name={name}", "data.path=topics.jsonl", "train.metric=accuracy", "model.quantize=4bit",
                             "lora.method=dora", "lora.dropout=0.08", "data.system=Classify.", "data.eval_path=t.jsonl"])
    (run / "config.yaml").write_text(cfg.to_yaml())
    records = [{"step": i + 1, "loss": v, "lr": 1e-3} for i, v in enumerate(losses)]
    records += [{"step": len(losses), "eval_loss": losses[-1] + 0.1}, {"step": len(losses), "eval_accuracy": 0.8}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"steps": len(losses), "final_loss": losses[-1], "train_loss": sum(losses) / len(losses)}
    if best:
        summary["in_training_eval"] = best
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "data_stats.json").write_text(json.dumps({"train": {"examples": 90, "tokens": 900, "trained_tokens": 180,
                                                               "truncated": 1, "dropped": 0, "max_tokens": 20}}))
    for folder, target, accuracy, predictions in evals:
        out = run / "eval" / folder
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"target": target, "data": "test.jsonl", "rows": len(predictions),
                                                      "metrics": {"accuracy": accuracy}, "created": folder}))
        (out / "predictions.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    return run


PREDICTIONS = [
    {"source": "t.jsonl:1", "prompt": "The striker scored twice.", "reference": "sports", "prediction": "sports",
     "accuracy": True},
    {"source": "t.jsonl:2", "prompt": "Rates went up <fast>.", "reference": "finance", "prediction": "weather",
     "accuracy": False},
]


@pytest.fixture
def run(tmp_path):
    best = {"metric": "accuracy", "best": 0.9, "best_step": 6, "evaluations": 3, "stopped_early_at": None,
            "adapter": "best = final"}
    evals = [("base-1", "builtin:smollm2-135m-instruct", 0.3, PREDICTIONS[:1]),
             ("test-2", "runs/classify", 0.95, PREDICTIONS)]
    return make_run(tmp_path, "classify-1", [2.0, 1.5, 1.0], best, evals)


def test_report_is_self_contained_with_all_sections(run):
    path = write_report(run)
    assert path == run / REPORT
    html = path.read_text()
    for key, value in (("model.quantize", "4bit"), ("lora.method", "dora"), ("lora.dropout", "0.08"),
                       ("data.system", "Classify."), ("data.eval_path", "t.jsonl")):
        assert key in html and value in html, key
    html = path.read_text()
    for heading in ("Configuration", "Data", "Curves", "Metrics", "Predictions"):
        assert f"<h2>{heading}</h2>" in html
    assert not re.search(r"https?://", html), "no external resources or links"
    assert "<script" not in html and "<link" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 1 and base64.b64decode(images[0])[:8] == PNG
    # both evaluations side by side (before vs after), and the in-training best
    assert "builtin:smollm2-135m-instruct" in html and "runs/classify" in html
    assert ">0.3<" in html and ">0.95<" in html and ">0.9<" in html
    # the latest eval's rows with one prediction column per eval of the same data (base: row 1 only),
    # the mismatch highlighted and text escaped
    assert html.count('<tr class="miss">') == 1 and html.count('<tr class="hit">') == 1
    assert html.count('<td class="hit">') == 2 and html.count('<td class="miss">') == 1
    assert "base-1: 0 of 1" in html and "test-2: 1 of 2" in html
    assert "<mark>weather</mark>" in html
    assert "&lt;fast&gt;" in html and "<fast>" not in html
    assert "topics.jsonl" in html and ">90<" in html  # config and data stats


def test_highlight_marks_only_the_differences():
    assert highlight("the cat sat", "the cat sat") == "the cat sat"
    assert highlight("北京是首都", "北京是中国的首都") == "北京是首都"  # deletions leave nothing to mark
    assert highlight("the dog sat", "the cat sat") == "the <mark>dog</mark> sat"


def test_runs_table_and_compare(tmp_path, run):
    make_run(tmp_path, "classify-2", [3.0, 2.0])
    rows = runs_rows(tmp_path)
    assert [r[0] for r in rows] == ["classify-1", "classify-2"]
    assert rows[0][2:] == ["topics.jsonl", "3", "1.0000", "accuracy 0.9000 @6"]
    assert rows[1][5] == "-"
    console = Console(record=True, width=200)
    assert print_runs(tmp_path, console) == 2
    assert "classify-2" in console.export_text()
    out = compare_runs([run, tmp_path / "classify-2"], tmp_path / "cmp.png")
    assert out.read_bytes()[:8] == PNG


def test_cli_report_runs_compare(tmp_path, run, capsys):
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file()
    assert main(["runs", str(tmp_path)]) == 0
    assert "classify-1" in capsys.readouterr().out
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    assert main(["compare", str(run), "--out", str(tmp_path / "one.png")]) == 2
    assert "two or more run dirs" in capsys.readouterr().err and not (tmp_path / "one.png").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_cli_eval_rejects_unknown_metric(tmp_path, capsys):
    assert main(["eval", "builtin:smollm2-135m-instruct", "--data", "x.jsonl", "--metric", "bleu"]) == 2
    assert "bleu" in capsys.readouterr().err
