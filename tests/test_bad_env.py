"""Bad config and environment: impossible values, prompts longer than data.max_length, model
paths that are not models, an adapter on another base model, an unwritable or full output
dir. Each is one clear error before training starts (most before any weights load)."""

import io
import json
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
from rich.console import Console

from chattune import rundir
from chattune.cli import main
from chattune.config import load_config

DiskUsage = namedtuple("DiskUsage", "total used free")


@pytest.fixture
def cli(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one message, one line

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize("override, key, says", [
    ("lora.r=0", "lora.r", "greater than 0"),
    ("train.lr=-1e-4", "train.lr", "greater than 0"),
    ("train.batch_size=0", "train.batch_size", "greater than 0"),
    ("train.epochs=0", "train.epochs", "greater than 0"),
    ("data.max_length=4", "data.max_length", "greater than 8"),
    ("data.eval_ratio=1.5", "data.eval_ratio", "less than 1"),
    ("lora.dropout=1", "lora.dropout", "less than 1"),
    ("data.on_error=ignore", "data.on_error", "'raise' or 'skip'"),
])
def test_impossible_values_stop_before_anything_runs(override, key, says, tmp_path, cli):
    code, err = cli("train", override, f"run_dir={tmp_path / 'run'}")
    assert code == 2 and f"'{key}'" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing is created for an invalid config"


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=1000)


def test_max_length_below_a_prompt_drops_that_example_with_its_reason(tokenizer, write_jsonl):
    from chattune.data.prepare import prepare_data, report_data

    path = write_jsonl([{"instruction": "Hi", "output": "Hello."}, {"instruction": "word " * 80, "output": "ok"}])
    cfg = load_config(None, [f"data.path={path}", "data.max_length=64"])
    console = _quiet()
    data = prepare_data(cfg, tokenizer, console)
    stats = data.stats["train"]
    assert stats["examples"] == 1 and stats["dropped"] == 1
    assert stats["drop_reasons"] == {"prompt alone is longer than max_length=64": 1}
    assert stats["dropped_sources"] == [f"{path}:2"]
    report_data(data.stats, console)
    printed = console.file.getvalue()
    assert f"{path}:2: very long" in printed  # the lint warned before tokenizing
    assert "dropped 1 {'prompt alone is longer than max_length=64': 1}" in printed


def test_every_example_dropped_is_an_error_saying_what_to_do(tmp_path, write_jsonl, builtin_tokenizer_dir, cli):
    path = write_jsonl([{"instruction": "word " * 80, "output": "ok"}, {"instruction": "more " * 80, "output": "ok"}])
    code, err = cli("train", f"data.path={path}", "data.max_length=64", f"model.name={tmp_path / 'no-model'}",
                    f"model.tokenizer={builtin_tokenizer_dir}", f"run_dir={tmp_path / 'run'}")
    assert code == 2
    assert ("all 2 training examples were dropped (2 prompt alone is longer than max_length=64; "
            f"e.g. {path}:1, {path}:2); raise data.max_length or shorten the prompts") in err
    assert "no such folder" not in err, "refused before the model is looked at"


@pytest.mark.parametrize("kind, says", [
    ("folder without config.json", "not a model folder (no config.json inside)"),
    ("a file", "is a file, not a model folder"),
    ("config.json but no weights", "has config.json but no weights"),
    ("config.json alone", "no usable tokenizer in this folder"),
])
def test_model_path_that_is_not_a_model(kind, says, tmp_path, tiny_model_dir, cli):
    model = tmp_path / "model"
    if kind == "a file":
        model = tmp_path / "model.safetensors"
        model.write_bytes(b"\0" * 64)
    else:
        shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("*.safetensors"))
        if kind == "folder without config.json":
            (model / "config.json").unlink()
        if kind == "config.json alone":  # the tokenizer loads first, before the weights are looked for
            for path in model.iterdir():
                if path.name != "config.json":
                    path.unlink()
    run = tmp_path / "run"
    code, err = cli("train", f"model.name={model}", "data.size=4", f"run_dir={run}")
    assert code == 2 and f"{model}: {says}" in err and "Traceback" not in err
    assert not (run / rundir.METRICS).exists() and not (run / "checkpoints").exists(), "training never started"


# ---- an adapter on another base model -------------------------------------------------------------

def make_run(run: Path, base: Path, tokenizer_dir: Path) -> Path:
    """A run dir holding a LoRA adapter made on `base` (untrained: only its shapes and names matter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(run / rundir.ADAPTER)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(run / rundir.TOKENIZER)
    set_base(run, base)
    return run


def set_base(run: Path, base: Path | str) -> None:
    (run / rundir.CONFIG).write_text(load_config(None, [f"model.name={base}", "name=r"]).to_yaml(), encoding="utf-8")


def set_recorded_base(run: Path, name: str) -> None:
    file = run / rundir.ADAPTER / "adapter_config.json"
    config = json.loads(file.read_text())
    file.write_text(json.dumps({**config, "base_model_name_or_path": name}))


@pytest.fixture
def no_weights(monkeypatch):
    from chattune.model import load

    def refuse(*args, **kwargs):
        raise AssertionError("the base model must not load for a mismatched adapter")

    monkeypatch.setattr(load, "load_base_model", refuse)


def test_chat_export_eval_serve_refuse_an_adapter_from_another_base(tmp_path, tiny_model_dir, varied_tiny_model_dir,
                                                                    write_jsonl, cli, no_weights):
    from chattune.adapter_base import AdapterMismatchError
    from chattune.serve.registry import load_registry

    run = make_run(tmp_path / "run", tiny_model_dir, tiny_model_dir)
    set_base(run, varied_tiny_model_dir)  # config.yaml now names another model than the adapter's
    both = [f"trained on base model '{tiny_model_dir}'", f"the base model being loaded is '{varied_tiny_model_dir}'",
            f"model.name in {run / rundir.CONFIG}"]
    data = write_jsonl([{"instruction": "Hi", "output": "Hello."}])
    for argv in (["chat", str(run), "--prompt", "hi"], ["export", str(run), "--out", str(tmp_path / "out")],
                 ["eval", str(run), "--data", str(data), "--out", str(tmp_path / "eval")]):
        code, err = cli(*argv)
        assert code == 2 and all(text in err for text in both), (argv, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()
    with pytest.raises(AdapterMismatchError, match="trained on base model"):
        load_registry([str(run)])


def test_a_different_architecture_is_caught_by_the_adapter_shapes(tmp_path, tiny_model_dir, cli):
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    narrow = tmp_path / "narrow"
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    LlamaForCausalLM(config).save_pretrained(narrow)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(narrow)
    run = make_run(tmp_path / "run", tiny_model_dir, tiny_model_dir)
    set_recorded_base(run, "someorg/unknown-here")  # a name that cannot be compared on this machine
    set_base(run, narrow)
    code, err = cli("chat", str(run), "--prompt", "hi")
    assert code == 2 and "does not fit the base model being loaded" in err
    assert "model.layers.0.self_attn.q_proj has input size 32, the adapter expects 64" in err
    assert "trained on 'someorg/unknown-here'" in err


def test_the_same_base_elsewhere_still_loads(tmp_path, tiny_model_dir):
    from chattune.infer.chat import ChatModel

    run = make_run(tmp_path / "run", tiny_model_dir, tiny_model_dir)
    copy = tmp_path / "copy-of-tiny"
    shutil.copytree(tiny_model_dir, copy)
    set_base(run, copy)  # another folder with the same config.json
    assert ChatModel.load(str(run)).model.peft_config
    set_recorded_base(run, "/machine/where/it/was/trained/tiny")  # the training machine's path
    assert ChatModel.load(str(run)).model.peft_config


# ---- output dir ---------------------------------------------------------------------------------

def test_a_file_where_the_output_folder_should_be(tmp_path, cli, monkeypatch):
    from chattune.model import load

    monkeypatch.setattr(load, "load_tokenizer", lambda *a, **k: pytest.fail("must stop before the tokenizer"))
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")
    code, err = cli("train", f"output_dir={blocker}", "name=x")
    assert code == 2 and f"{blocker}/x-" in err and "cannot write the run dir here (Not a directory)" in err
    code, err = cli("train", f"run_dir={blocker}")
    assert code == 2 and f"{blocker}: is a file, not a folder" in err


def _as_unprivileged(work):
    """Run work() where file permissions apply: as user nobody in a child process when we are root
    (root writes through chmod). Returns work()'s result or the error it raised, as text."""
    def attempt() -> str:
        try:
            return str(work())
        except Exception as err:  # the error is the result under test
            return f"{type(err).__name__}: {err}"

    if os.geteuid() != 0:
        return attempt()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, report, exit without pytest's teardown
        os.close(read_end)
        try:
            os.setgid(65534)
            os.setuid(65534)
            result = attempt()
        except BaseException as err:
            result = f"could not drop privileges: {err}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = pipe.read().decode()
    os.waitpid(pid, 0)
    return result


def test_a_read_only_output_folder_fails_before_training():
    from chattune.training.trainer import prepare_run_dir

    parent = Path(tempfile.mkdtemp())  # under /tmp, so user nobody can reach it
    try:
        os.chmod(parent, 0o555)
        cfg = load_config(None, [f"run_dir={parent / 'run'}"])
        result = _as_unprivileged(lambda: prepare_run_dir(cfg))
        assert result == f"RunDirError: {parent / 'run'}: cannot write the run dir here (Permission denied); " \
                         "choose another output_dir or run_dir"
    finally:
        os.chmod(parent, 0o755)
        shutil.rmtree(parent)


def test_a_full_disk_fails_before_the_tokenizer_loads(tmp_path, monkeypatch):
    from chattune.training.trainer import prepare_run_dir

    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(rundir.RunDirError, match=r"only 1.0 MiB free on this disk, but the run needs about 32 MiB"):
        prepare_run_dir(load_config(None, [f"run_dir={tmp_path / 'run'}"]))
    assert not (tmp_path / "run").exists(), "the run dir made for the refused run is removed again"


def test_too_little_space_for_adapter_and_checkpoints_fails_before_the_first_step(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    from chattune.training.trainer import train

    free = rundir.SPACE_MARGIN + 1  # enough to start, not for this run's adapter and checkpoints
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 * 2**30, 10 * 2**30 - free, free))
    run = tmp_path / "run"
    cfg = load_config(None, [f"model.name={tiny_model_dir}", "data.size=4", "train.max_steps=1", f"run_dir={run}"])
    with pytest.raises(rundir.RunDirError, match=r"MiB free on this disk, but the run needs about \d+ MiB"):
        train(cfg, console=_quiet())
    assert not (run / rundir.METRICS).exists() and not (run / "checkpoints").exists()


def test_estimated_size_counts_adapter_copies_and_checkpoints():
    adapter = 4 * 1_000_000  # fp32 bytes of 1M trainable parameters
    assert rundir.estimated_size(1_000_000, 0) == 3 * adapter + rundir.SPACE_MARGIN
    assert rundir.estimated_size(1_000_000, 3) - rundir.estimated_size(1_000_000, 2) == 3 * adapter


def test_bitsandbytes_hub_kernel_notice_is_dropped_and_other_warnings_kept(caplog):
    """On AVX512-BF16 CPUs bitsandbytes logs that it could not fetch a hub kernel on every import."""
    import logging

    import chattune  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "no kernels")
        logger.warning("a real bitsandbytes problem")
    assert "gemm_4bit_forward" not in caplog.text
    assert "a real bitsandbytes problem" in caplog.text
