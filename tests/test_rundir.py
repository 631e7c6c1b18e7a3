"""rundir.py is the only run-dir API: every name lives there, RunDir reads a run, and
load_for_inference loads it the same way for chat, export and serve."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from chattune import rundir
from chattune.config import load_config

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "chattune"
# Run-dir names that are also plain words elsewhere (dict keys, roles, CLI commands)
PLAIN_WORDS = {rundir.ADAPTER, rundir.TOKENIZER, rundir.EVAL_DIR}
# The stages left of the run dir, and the neutral modules: none may import rundir.py
UPSTREAM = ("config.py", "config_paths.py", "config_sections.py", "models.py", "metrics.py", "faults.py", "io.py",
            "data/", "model/")


def _run_dir_names() -> set[str]:
    return {value for name, value in vars(rundir).items()
            if name.isupper() and isinstance(value, str) and value not in PLAIN_WORDS}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def test_no_module_but_rundir_spells_a_run_dir_name():
    names = _run_dir_names()
    assert {"config.yaml", "init_adapter", "last_adapter", "checkpoints", "eval_best_adapter.safetensors",
            "predictions.jsonl", "report.html"} <= names
    found = [f"{module}:{node.lineno}: {node.value!r}" for module, tree in _modules() if module != "rundir.py"
             for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names]
    assert found == [], "import the name from chattune.rundir instead"


def _imports_rundir(node) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.module == "chattune.rundir" or (node.module == "chattune" and "rundir" in {a.name for a in node.names})
    return isinstance(node, ast.Import) and "chattune.rundir" in {a.name for a in node.names}


def test_upstream_stages_do_not_import_rundir():
    importers = [f"{module}:{node.lineno}" for module, tree in _modules() if module.startswith(UPSTREAM)
                 for node in ast.walk(tree) if _imports_rundir(node)]
    assert importers == [], "config -> data -> model -> train -> run dir: use chattune.io for file writes"


def test_importing_rundir_loads_no_model_library():
    code = "import sys, chattune.rundir; print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def tiny_run(varied_tiny_model_dir, tmp_path_factory):
    """A one-step tiny run whose LoRA B weights are made large, so the adapter changes the logits."""
    from adapter_helpers import strengthen_adapter
    from chattune.training.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_config(None, [
        f"model.name={varied_tiny_model_dir}", f"run_dir={run_dir}", "name=tiny", "data.size=12",
        "data.eval_ratio=0.25", "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.precision=fp32", "lora.dropout=0.0",
    ]))
    strengthen_adapter(run_dir)
    return run_dir


def test_run_dir_reads_what_training_wrote(tiny_run):
    from chattune.report.runinfo import read_run

    run = rundir.open_run_dir(tiny_run)
    assert run.config().name == "tiny" and run.config_dict()["name"] == "tiny"
    assert run.summary() == json.loads((tiny_run / rundir.SUMMARY).read_text(encoding="utf-8"))
    assert run.data_stats()["train"]["examples"] > 0
    lines = (tiny_run / rundir.METRICS).read_text(encoding="utf-8").splitlines()
    assert run.metrics() == [json.loads(line) for line in lines] != []
    assert run.evals() == []
    saved = tiny_run / rundir.EVAL_DIR / "data-1"
    saved.mkdir(parents=True)
    (saved / rundir.EVAL_SUMMARY).write_text(json.dumps({"metrics": {"bleu": 0.5}}), encoding="utf-8")
    (saved / rundir.PREDICTIONS).write_text('{"prediction": "x"}\n', encoding="utf-8")
    assert run.evals() == [rundir.SavedEval(saved, {"metrics": {"bleu": 0.5}}, [{"prediction": "x"}])]
    info = read_run(tiny_run)
    assert (info.config, info.summary, info.records, info.evals) == (
        run.config_dict(), run.summary(), run.metrics(), run.evals())


def test_what_the_writer_writes_the_reader_reads_and_nothing_else_is_left(tmp_path):
    cfg = load_config(None, ["name=written", "data.path=rows.jsonl"])
    run = rundir.RunDir(tmp_path / "run")
    run.write_config(cfg)
    run.write_data_stats({"train": {"examples": 3}})
    run.write_metrics([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    run.write_summary({"steps": 1})
    run.write_summary({"steps": 2})  # replaced whole
    run.write_template("{{ messages }}")
    run.write_adapter(lambda out: (out / "adapter_config.json").write_text("{}", encoding="utf-8"))
    assert run.config() == cfg and run.config_dict()["name"] == "written"
    assert run.data_stats() == {"train": {"examples": 3}} and run.summary() == {"steps": 2}
    assert run.metrics() == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert (run.path / rundir.TEMPLATE).read_text(encoding="utf-8") == "{{ messages }}"
    assert (run.adapter / "adapter_config.json").is_file()
    rundir.write_eval_folder(run.path / rundir.EVAL_DIR / "data-1", {"created": "1", "metrics": {"bleu": 0.5}},
                             [{"prediction": "x"}])
    assert run.evals() == [rundir.SavedEval(run.path / rundir.EVAL_DIR / "data-1",
                                            {"created": "1", "metrics": {"bleu": 0.5}}, [{"prediction": "x"}])]
    assert not list(run.path.rglob(".*")), "every write went through a temporary that was renamed"


def test_load_for_inference_is_what_chat_export_and_serve_run(tiny_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from chattune.exporting.merge import load_run
    from chattune.infer.chat import ChatModel

    ids = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])

    def logits(model):
        with torch.inference_mode():
            return model(input_ids=ids).logits

    loaded = rundir.load_for_inference(tiny_run)
    cfg = rundir.open_run_dir(tiny_run).config()
    assert loaded.cfg == cfg and not loaded.model.training
    assert loaded.tokenizer.chat_template == (tiny_run / rundir.TEMPLATE).read_text(encoding="utf-8")
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=torch.float32)
    base_logits = logits(base)
    reference = logits(PeftModel.from_pretrained(base, str(tiny_run / rundir.ADAPTER)).eval())
    assert not torch.equal(reference, base_logits), "the adapter must matter for this test to mean anything"
    assert torch.equal(logits(loaded.model), reference)
    assert torch.equal(logits(ChatModel.load(str(tiny_run)).model), reference)
    assert torch.equal(logits(load_run(tiny_run).model), reference)
    joined = rundir.join_for_inference(tiny_run, loaded.model, "again")
    joined.model.set_adapter("again")
    assert joined.model is loaded.model and torch.equal(logits(joined.model), reference)
    assert joined.tokenizer.chat_template == loaded.tokenizer.chat_template
