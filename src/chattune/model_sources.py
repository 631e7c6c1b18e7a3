"""Find a hub id (ORG/NAME) or `modelscope:ORG/NAME` as a local snapshot folder in its download cache.

Hugging Face: `huggingface_hub.snapshot_download` in the hub's cache layout
(`$HF_HUB_CACHE` or `$HF_HOME/hub`: `models--ORG--NAME/refs/REV`, `snapshots/COMMIT/`). Offline
(HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1) it only looks in the cache; online it downloads what
is missing, less other frameworks' and quantized copies of the weights. ModelScope: offline, or
without the `modelscope` package, the folder is looked up in ModelScope's cache layouts
(`$MODELSCOPE_CACHE`, default ~/.cache/modelscope; checked against modelscope 1.40's own
local_files_only lookup); online with the package, its `snapshot_download` fetches it. Either way a missing model is a ModelSourceError naming the id.
models.resolve_model calls this module; the folder it returns is opened like any local model.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from chattune.models import ModelSourceError

# Copies of the weights chattune never loads; torch pickles too when safetensors exist.
SKIPPED = ["*.gguf", "*.onnx", "*.onnx_data", "onnx/*", "openvino/*", "original/*", "coreml/*",
           "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.mlmodel"]
TORCH_PICKLES = ["*.bin", "*.pt", "*.pth"]
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.upper() in _TRUE


def hub_cache_dir() -> str:
    """The hub cache as huggingface_hub computes it, from the environment as it is now."""
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return constants.HF_HUB_CACHE


def hub_snapshot(repo_id: str, revision: str | None = None) -> str:
    """The snapshot folder of `repo_id` at `revision` (a branch or tag through refs/, or a commit)."""
    from huggingface_hub import errors

    offline = hub_offline()
    try:
        folder = _cached_hub(repo_id, revision) if offline else _download_hub(repo_id, revision)
    except errors.LocalEntryNotFoundError as err:  # IncompleteSnapshotError included
        raise ModelSourceError(_hub_absent(repo_id, revision, err, offline)) from None
    except errors.RevisionNotFoundError:
        raise ModelSourceError(f"model {repo_id!r}: the hub has no revision {revision!r} (model.revision); "
                               "give a branch, tag or commit of that repo") from None
    except errors.RepositoryNotFoundError as err:  # GatedRepoError included
        raise ModelSourceError(f"model {repo_id!r}: not found on the Hugging Face hub, or private or gated "
                               f"({type(err).__name__}); check the id, or log in with `hf auth login` "
                               "after requesting access") from None
    return _with_config(folder, repo_id)


def _cached_hub(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, revision=revision, cache_dir=hub_cache_dir(), local_files_only=True,
                             ignore_patterns=SKIPPED + TORCH_PICKLES)


def _download_hub(repo_id: str, revision: str | None) -> str:
    """Download what the cache lacks (unreachable hub: snapshot_download falls back to the cache)."""
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, ignore_patterns=SKIPPED + TORCH_PICKLES)
    if not any(Path(folder).glob("*.safetensors")):  # a repo with torch pickles only
        folder = snapshot_download(repo_id, revision=Path(folder).name, cache_dir=cache,
                                   allow_patterns=TORCH_PICKLES)
    return folder


def _hub_absent(repo_id: str, revision: str | None, err: Exception, offline: bool) -> str:
    at = f" at revision {revision!r}" if revision else ""
    get = f"`hf download {repo_id}" + (f" --revision {revision}`" if revision else "`")
    fixes = (f"download it once with network access (chattune does when HF_HUB_OFFLINE is unset, or {get}), "
             "or point HF_HOME (or HF_HUB_CACHE) at a cache that holds it")
    if type(err).__name__ == "IncompleteSnapshotError":
        return f"model {repo_id!r}{at}: its snapshot in {hub_cache_dir()} is incomplete ({_first_line(err)}); {fixes}"
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else f"the hub could not be reached ({_first_line(err)})"
    return f"model {repo_id!r}{at}: not in the Hugging Face cache {hub_cache_dir()} and {why}; {fixes}"


def modelscope_cache_dir() -> Path:
    """ModelScope's cache root: $MODELSCOPE_CACHE, else ~/.cache/modelscope."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or Path.home() / ".cache" / "modelscope").expanduser()


def modelscope_snapshot(model_id: str, revision: str | None = None) -> str:
    """The local folder of `modelscope:ORG/NAME`, from the cache or (online, with the package) downloaded."""
    if model_id.count("/") != 1 or model_id.startswith(("/", ".")):
        raise ModelSourceError(f"modelscope:{model_id}: give the model as modelscope:ORG/NAME")
    cached = modelscope_cached(model_id, revision, modelscope_cache_dir())
    installed = importlib.util.find_spec("modelscope") is not None
    if hub_offline() or not installed:
        if cached is None:
            raise ModelSourceError(_modelscope_absent(model_id, revision, installed))
        return _with_config(cached, f"modelscope:{model_id}")
    from modelscope import snapshot_download

    try:
        folder = snapshot_download(model_id, revision=revision or "master", ignore_patterns=SKIPPED)
    except Exception as err:  # modelscope raises requests', its own and ValueError types
        if cached is None:
            raise ModelSourceError(f"modelscope:{model_id}: download failed ({type(err).__name__}: "
                                   f"{_first_line(err)}) and it is not in {modelscope_cache_dir()}") from err
        folder = cached
    return _with_config(str(folder), f"modelscope:{model_id}")


def modelscope_cached(model_id: str, revision: str | None, root: Path) -> str | None:
    """The layouts modelscope 1.40 / modelscope-hub 0.5 reuse, in their order: the older SDKs'
    ORG/NAME folders (dots in NAME written ___), then models/ORG--NAME/snapshots/REVISION."""
    owner, name = model_id.split("/")
    safe = name.replace(".", "___")
    if revision in (None, "master"):  # the old layouts keep no revision: only the default one
        for folder in (root / "models" / owner / safe, root / "hub" / "models" / owner / safe, root / owner / name,
                       root / owner / safe, root / "hub" / owner / name, root / "hub" / owner / safe,
                       root / "models" / owner / name):
            if _non_empty(folder):
                return str(folder)
    snapshots = root / "models" / f"{owner}--{name}" / "snapshots"
    for rev in [revision] if revision else ["master", "main"]:
        if _non_empty(snapshots / rev):
            return str(snapshots / rev)
    others = sorted(p for p in snapshots.glob("*") if _non_empty(p)) if revision is None else []
    return str(others[0]) if len(others) == 1 else None


def _modelscope_absent(model_id: str, revision: str | None, installed: bool) -> str:
    at = f" at revision {revision!r}" if revision else ""
    where = f"not in the ModelScope cache {modelscope_cache_dir()}"
    if not installed:
        return (f"modelscope:{model_id}{at}: {where}, and downloading needs the optional extra: "
                "pip install 'chattune[modelscope]' (or set MODELSCOPE_CACHE to a cache that holds it)")
    return (f"modelscope:{model_id}{at}: {where} and the hub is offline (HF_HUB_OFFLINE=1); download it once "
            f"with network access (`modelscope download --model {model_id}`), or set MODELSCOPE_CACHE to a "
            "cache that holds it")


def _with_config(folder: str, label: str) -> str:
    if not (Path(folder) / "config.json").is_file():
        raise ModelSourceError(f"model {label!r}: its files in {folder} have no config.json; chattune needs a "
                               "transformers model (config.json and the weights)")
    return folder


def _non_empty(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(folder.iterdir())
    except OSError:
        return False


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0][:200]
