"""Training on a tiny random Llama: what changes, what the run dir holds, how it reloads."""

import json

import pytest
import torch

from chattune import rundir
from chattune.config import load_config


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from chattune.training.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={run_dir}", "name=tiny",
        "data.size=16", "data.eval_ratio=0.25", "train.max_steps=2", "train.batch_size=2",
        "train.grad_accum=2", "train.lr=1e-2", "train.precision=fp32", "lora.dropout=0.0",
    ])
    return train(cfg)


def _base_state(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()


def test_only_lora_parameters_change(trained, tiny_model_dir):
    original = _base_state(tiny_model_dir)
    model = trained.model
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must move"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = model.get_base_model().state_dict()
    compared = 0
    for name, tensor in original.items():
        key = name.replace(".weight", ".base_layer.weight")
        current = base.get(key, base.get(name))
        assert current is not None, name
        assert torch.equal(current, tensor), f"base weight {name} changed"
        compared += 1
    assert compared == len(original)


def test_run_dir_contents(trained):
    path = trained.run_dir
    for name in (rundir.CONFIG, rundir.TEMPLATE, rundir.DATA_STATS, rundir.METRICS, rundir.LOSS_PLOT, rundir.SUMMARY):
        assert (path / name).is_file(), name
    assert (path / "adapter" / "adapter_config.json").is_file()
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    assert (path / "tokenizer" / "tokenizer.json").is_file()
    assert (path / rundir.LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<|im_start|>" in (path / rundir.TEMPLATE).read_text()
    cfg = rundir.open_run_dir(path).config()
    assert cfg.train.max_steps == 2 and cfg.name == "tiny"
    stats = json.loads((path / rundir.DATA_STATS).read_text())
    assert stats["train"]["examples"] == 12 and stats["eval"]["examples"] == 4
    assert 0 < stats["train"]["trained_tokens"] < stats["train"]["tokens"]
    records = rundir.RunDir(path).metrics()
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 and "grad_norm" in r for r in steps)
    assert any("eval_loss" in r for r in records)
    summary = json.loads((path / rundir.SUMMARY).read_text())
    assert summary["steps"] == 2 and summary["tokens"] > summary["trained_tokens"] > 0


def test_adapter_reloads_with_plain_peft_and_same_logits(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 520, 33, 2, 17, 900, 4]])
    trained.model.eval()
    with torch.no_grad():
        expected = trained.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        reloaded = PeftModel.from_pretrained(base, trained.run_dir / "adapter").eval()
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


def test_chat_prompt_on_run_dir(trained, capsys):
    from chattune.cli import main

    code = main(["chat", str(trained.run_dir), "--prompt", "Who are you?", "--max-new-tokens", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out.strip()) > 0


def test_chat_module_multi_round_repl(trained):
    from chattune.infer.chat import ChatModel, GenerationSettings, repl

    chat = ChatModel.load(str(trained.run_dir))
    lines = iter(["hello", "again", "/reset", "third", "/exit"])
    seen_histories = []
    original = chat.stream

    def spy(history, settings):
        seen_histories.append([m["content"] for m in history])
        yield from original(history, settings)

    chat.stream = spy
    out = []
    repl(chat, GenerationSettings(max_new_tokens=3), read=lambda _: next(lines), write=lambda *a, **k: out.append(a))
    assert seen_histories[0] == ["hello"]
    assert seen_histories[1][0] == "hello" and seen_histories[1][2] == "again"
    assert seen_histories[2] == ["third"], "/reset clears the history"


def test_bad_data_fails_before_model_loads(tmp_path, write_jsonl, monkeypatch):
    from chattune.data.formats import DataError
    from chattune.model import load
    from chattune.training import trainer
    from chattune.training.trainer import train

    bad = write_jsonl([{"instruction": "q", "output": 3}])

    def boom(*args, **kwargs):
        raise AssertionError("the model must not load for bad data")

    # the trainer holds its own reference (imported by name): patch it where it is called, and at the source
    for module in (load, trainer):
        monkeypatch.setattr(module, "load_base_model", boom)
    cfg = load_config(None, [f"data.path={bad}", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(DataError, match=r"data.jsonl:1:output"):
        train(cfg)
    good = write_jsonl([{"instruction": "q", "output": "a"}], name="good.jsonl")
    with pytest.raises(AssertionError, match="must not load"):  # the patch fires once the data is fine
        train(load_config(None, [f"data.path={good}", f"run_dir={tmp_path / 'g'}", "data.eval_ratio=0"]))


def test_existing_run_dir_is_refused(tmp_path):
    from chattune.training.trainer import prepare_run_dir

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        prepare_run_dir(load_config(None, [f"run_dir={tmp_path / 'r'}"]))


def test_training_stops_at_the_first_non_finite_loss_and_saves_nothing(tiny_model_dir, tmp_path):
    """An lr that blows the weights up: the run stops naming the step and the likely causes; no adapter,
    no checkpoint of that step, no NaN/Infinity in metrics.jsonl."""
    from chattune.training.callbacks import TrainingDiverged
    from chattune.training.trainer import train

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.size=8", "train.max_steps=6",
        "train.batch_size=2", "train.grad_accum=1", "train.lr=1e30", "train.save_every=1",
        "train.precision=fp32",
    ])
    with pytest.raises(TrainingDiverged, match=r"step \d+: .*train.lr=1e\+30") as err:
        train(cfg)
    step = int(str(err.value).split(":")[0].split()[-1])
    run = tmp_path / "run"
    assert not (run / "adapter").exists()
    assert not (run / "checkpoints" / f"checkpoint-{step}").exists()
    text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
    assert "NaN" not in text and "Infinity" not in text
