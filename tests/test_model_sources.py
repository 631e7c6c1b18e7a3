"""Hub ids and modelscope: ids resolve to snapshot folders in caches built here (never the network)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import shutil
import sys
import types
from pathlib import Path

import pytest

from chattune.config import ModelConfig
from chattune.models import ModelSourceError, resolve_model

REPO = "tiny-org/tiny-llama"
MAIN = "a" * 40  # refs/main
V1 = "b" * 40  # refs/v1 (a tag)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An empty temp HF_HOME, offline; any hub API call fails the test."""
    from huggingface_hub import HfApi

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub API was called")

    for method in ("repo_info", "model_info", "list_repo_tree"):
        monkeypatch.setattr(HfApi, method, no_network)
    return home


def add_to_hub_cache(hub: Path, repo_id: str, files: Path, commit: str, refs=("main",)) -> Path:
    """Lay out `files` as huggingface_hub does: blobs/ by content hash, snapshots/COMMIT/ of
    relative symlinks into blobs/, refs/REF holding the commit."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(p for p in files.iterdir() if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)  # no newline, as the hub writes it
    return snapshot


@pytest.fixture
def hub_repo(hf_home, tiny_model_dir):
    main = add_to_hub_cache(hf_home / "hub", REPO, tiny_model_dir, MAIN)
    v1 = add_to_hub_cache(hf_home / "hub", REPO, tiny_model_dir, V1, refs=("v1",))
    return main, v1


def test_hub_id_resolves_offline_to_its_snapshot_and_loads(hub_repo):
    from chattune.model.load import load_base_model, load_tokenizer

    main, _ = hub_repo
    assert resolve_model(REPO) == str(main)
    cfg = ModelConfig(name=REPO)
    tokenizer = load_tokenizer(cfg)
    model = load_base_model(cfg)
    assert tokenizer.name_or_path == str(main)  # the data cache key sees the snapshot (its commit)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)


def test_a_revision_resolves_through_refs_or_as_a_commit(hub_repo):
    from chattune.model.load import load_base_model

    main, v1 = hub_repo
    assert resolve_model(REPO, "v1") == str(v1)
    assert resolve_model(REPO, "main") == str(main)
    assert resolve_model(REPO, V1) == str(v1)
    assert load_base_model(ModelConfig(name=REPO, revision="v1")).config.num_hidden_layers == 2


def test_hub_cache_env_is_read_at_call_time(hf_home, tiny_model_dir, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    snapshot = add_to_hub_cache(elsewhere, REPO, tiny_model_dir, MAIN)
    monkeypatch.setenv("HF_HUB_CACHE", str(elsewhere))  # wins over HF_HOME, as in huggingface_hub
    assert resolve_model(REPO) == str(snapshot)


def test_absent_offline_names_the_id_and_the_fix(hf_home, hub_repo):
    with pytest.raises(ModelSourceError) as err:
        resolve_model("nobody/missing-model")
    message = str(err.value)
    assert "'nobody/missing-model'" in message and "HF_HUB_OFFLINE=1" in message
    assert str(hf_home / "hub") in message
    assert "hf download nobody/missing-model`" in message and "HF_HOME" in message
    with pytest.raises(ModelSourceError, match=r"'tiny-org/tiny-llama' at revision 'v2'.*--revision v2"):
        resolve_model(REPO, "v2")  # the repo is cached, that revision is not


def test_incomplete_snapshot_is_reported_offline(hub_repo):
    main, _ = hub_repo
    listing = {name.name: {"size": 1, "blob_id": "0" * 40} for name in main.iterdir()}
    listing["model-00002-of-00002.safetensors"] = {"size": 1, "blob_id": "1" * 40}  # an interrupted download
    listing["model.onnx"] = {"size": 1, "blob_id": "2" * 40}  # skipped on purpose: not missing
    trees = main.parent.parent / "trees"
    trees.mkdir()
    (trees / f"{MAIN}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    with pytest.raises(ModelSourceError, match=r"'tiny-org/tiny-llama': its snapshot in .* is incomplete"
                                               r".*model-00002-of-00002\.safetensors"):
        resolve_model(REPO)


def test_a_hub_snapshot_without_config_is_refused(hf_home, tmp_path):
    files = tmp_path / "gguf-only"
    files.mkdir()
    (files / "model.Q4_0.gguf").write_bytes(b"GGUF")
    add_to_hub_cache(hf_home / "hub", "org/gguf-only", files, MAIN)
    with pytest.raises(ModelSourceError, match=r"'org/gguf-only': .* no config\.json"):
        resolve_model("org/gguf-only")


def test_online_download_skips_duplicate_weights(hf_home, tmp_path, monkeypatch):
    """Online (faked: nothing is downloaded) the hub is asked for the snapshot without other
    frameworks' weights; a repo with torch pickles only is asked again for those."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    snapshot = tmp_path / "snap" / MAIN
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model(REPO, "main") == str(snapshot)
    first, again = calls
    assert first["revision"] == "main" and not first.get("local_files_only")
    assert first["cache_dir"] == str(hf_home / "hub")
    assert {"*.gguf", "*.onnx", "original/*", "*.bin"} <= set(first["ignore_patterns"])
    assert again["revision"] == MAIN and again["allow_patterns"] == ["*.bin", "*.pt", "*.pth"]
    calls.clear()
    (snapshot / "model.safetensors").write_bytes(b"")
    resolve_model(REPO)
    assert len(calls) == 1, "with safetensors weights the torch pickles are not fetched"


# ---- ModelScope: its cache layouts, offline; the package itself is not installed in the test venv ----

@pytest.fixture
def ms_cache(tmp_path, monkeypatch):
    root = tmp_path / "modelscope"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def _fill(folder: Path, files: Path) -> Path:
    shutil.copytree(files, folder)
    return folder


def test_modelscope_new_layout_resolves_offline_and_loads(ms_cache, tiny_model_dir):
    from chattune.model.load import load_base_model, load_tokenizer

    snapshots = ms_cache / "models" / "qwen--Tiny-0.5B" / "snapshots"
    master = _fill(snapshots / "master", tiny_model_dir)
    v1 = _fill(snapshots / "v1.0", tiny_model_dir)
    assert resolve_model("modelscope:qwen/Tiny-0.5B") == str(master)
    assert resolve_model("modelscope:qwen/Tiny-0.5B", "v1.0") == str(v1)
    cfg = ModelConfig(name="modelscope:qwen/Tiny-0.5B")
    assert load_tokenizer(cfg).name_or_path == str(master)
    assert load_base_model(cfg).config.num_hidden_layers == 2


def test_modelscope_older_layouts_are_found(ms_cache, tiny_model_dir):
    legacy = _fill(ms_cache / "hub" / "models" / "qwen" / "Tiny-0___5B", tiny_model_dir)  # dots as ___
    assert resolve_model("modelscope:qwen/Tiny-0.5B") == str(legacy)
    flat = _fill(ms_cache / "org" / "flat", tiny_model_dir)  # SDKs before 1.38 with MODELSCOPE_CACHE set
    assert resolve_model("modelscope:org/flat") == str(flat)
    with pytest.raises(ModelSourceError, match=r"modelscope:org/flat at revision 'v2'"):
        resolve_model("modelscope:org/flat", "v2")  # an old layout keeps no revision: only the default


def test_modelscope_absent_names_the_id(ms_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # not installed, whatever this venv has
    with pytest.raises(ModelSourceError) as err:
        resolve_model("modelscope:qwen/Missing-1B")
    message = str(err.value)
    assert "modelscope:qwen/Missing-1B" in message and str(ms_cache) in message
    assert "chattune[modelscope]" in message and "MODELSCOPE_CACHE" in message


@pytest.fixture
def fake_modelscope(monkeypatch, tmp_path):
    """A stand-in `modelscope` package whose snapshot_download records its calls."""
    module = types.ModuleType("modelscope")
    module.__spec__ = importlib.machinery.ModuleSpec("modelscope", None)
    calls = []
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    (downloaded / "config.json").write_text("{}")

    def snapshot_download(model_id, revision=None, ignore_patterns=None):
        assert "*.gguf" in ignore_patterns
        calls.append((model_id, revision))
        return str(downloaded)

    module.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "modelscope", module)
    return calls, downloaded


def test_modelscope_installed_offline_uses_the_cache_only(ms_cache, fake_modelscope):
    calls, _ = fake_modelscope
    with pytest.raises(ModelSourceError, match=r"offline \(HF_HUB_OFFLINE=1\).*modelscope download --model qwen/X"):
        resolve_model("modelscope:qwen/X")
    assert calls == []


def test_modelscope_installed_online_downloads_through_the_package(ms_cache, fake_modelscope, monkeypatch):
    from huggingface_hub import constants

    calls, downloaded = fake_modelscope
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve_model("modelscope:qwen/X") == str(downloaded)
    assert calls == [("qwen/X", "master")]
    with pytest.raises(ModelSourceError, match="modelscope:ORG/NAME"):
        resolve_model("modelscope:no-org")
