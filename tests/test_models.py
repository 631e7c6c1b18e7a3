"""Model sources: name resolution and the built-in conversion cache (conversion itself faked here)."""

import pytest

from chattune import models
from chattune.model import gguf_base
from chattune.models import ModelSourceError, builtin_cache_dir, ensure_builtin, resolve_model

KEY = "smollm2-135m-instruct"


@pytest.fixture
def fake_convert(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        if fake_convert_state.get("fail"):
            raise KeyboardInterrupt  # an interrupted conversion

    fake_convert_state = {}
    monkeypatch.setattr(gguf_base, "convert_gguf", convert)
    return calls, fake_convert_state


def test_conversion_runs_once_and_is_reused(fake_convert):
    calls, _ = fake_convert
    path = ensure_builtin(KEY)
    assert path == builtin_cache_dir(KEY) and (path / "chattune-converted.json").is_file()
    assert ensure_builtin(KEY) == path
    assert len(calls) == 1
    assert oct(path.stat().st_mode & 0o777) == "0o755"


def test_broken_cache_is_detected_and_redone(fake_convert):
    calls, _ = fake_convert
    target = builtin_cache_dir(KEY)
    target.mkdir(parents=True)
    (target / "model.safetensors").write_text("half written")  # no completion marker
    ensure_builtin(KEY)
    assert len(calls) == 1
    assert not (target / "model.safetensors").exists()
    assert (target / "chattune-converted.json").is_file()


def test_interrupted_conversion_leaves_nothing(fake_convert):
    calls, state = fake_convert
    state["fail"] = True
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin(KEY)
    parent = builtin_cache_dir(KEY).parent
    assert list(parent.iterdir()) == [], "no target and no temporary folder is left behind"
    state["fail"] = False
    assert ensure_builtin(KEY).is_dir()


def test_resolve_model_names(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "m")) == str(tmp_path / "m")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache, offline (test_model_sources: a full one)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ModelSourceError, match="'HuggingFaceTB/SmolLM2-135M-Instruct': not in the Hugging Face cache"):
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="not a model folder"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match="unknown built-in model"):
        resolve_model("builtin:nope")
    with pytest.raises(ModelSourceError, match="no such folder"):
        resolve_model("./missing-model")


def test_modelscope_needs_its_extra():
    import importlib.util

    if importlib.util.find_spec("modelscope") is not None:
        pytest.fail("modelscope is installed in the test venv; this test checks the message without it")
    with pytest.raises(ModelSourceError, match=r"chattune\[modelscope\]"):
        resolve_model("modelscope:qwen/Qwen2-0.5B-Instruct")


def test_leftovers_of_a_killed_conversion_are_removed_and_it_is_redone(fake_convert):
    import os
    import time

    calls, _ = fake_convert
    parent = builtin_cache_dir(KEY).parent
    parent.mkdir(parents=True)
    killed = parent / f".{KEY}-killed"  # kill -9 mid-conversion: no except clause ran
    killed.mkdir()
    (killed / "model.safetensors").write_text("half written")
    long_ago = time.time() - models.STALE_SECONDS - 60
    os.utime(killed, (long_ago, long_ago))
    running = parent / f".{KEY}-running"  # another process converting right now
    running.mkdir()
    path = ensure_builtin(KEY)
    assert (path / "chattune-converted.json").is_file() and len(calls) == 1
    assert not killed.exists() and running.exists()
