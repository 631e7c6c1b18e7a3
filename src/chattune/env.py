"""`chattune env`: a paste-able report of this machine for bug reports (versions, hardware, caches).

`collect()` gathers chattune's version and git commit, the libraries' versions marked against the
tested set (chattune/versions.py), the platform, the CPU (bf16 speed by model/load.py's own check)
or the GPUs, the cache folders with their free disk, and which built-in models are present;
`to_markdown()` renders it for an issue, the CLI's `--json` and the web UI's /api/env give the same
dict. Every probe that fails is reported as its error, never raised. Nothing here installs,
downloads or converts anything, and it does not decide what a run uses.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from chattune import __version__, versions

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes",
             "gguf", "swanlab", "llama-cpp-python")
CPU_FLAGS = ("amx_bf16", "amx_fp16", "amx_tile", "avx512_bf16", "avx512f", "avx2")
_GIB = 1 << 30


def collect() -> dict:
    """The whole report as plain JSON-able values."""
    return {
        "chattune": _probe(_chattune),
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": _probe(_platform),
        "libraries": libraries(),
        "cpu": _probe(_cpu),
        "gpu": _probe(_gpu),
        "caches": _probe(caches),
        "builtin_models": _probe(builtin_models),
    }


def _probe(probe: Callable[[], object]) -> object:
    try:
        return probe()
    except Exception as err:  # a report of a broken machine must still print
        return {"error": f"{type(err).__name__}: {err}"}


def libraries() -> list[dict]:
    """Each library's installed version, its tested one and the mark (versions.mark)."""
    tested = versions.tested_versions()
    rows = []
    for name in LIBRARIES:
        installed = versions.installed_version(name)
        row = {"name": name, "installed": installed, "tested": tested.get(name),
               "mark": versions.mark(installed, tested.get(name))}
        if installed and tested.get(name):
            row["in_range"] = versions.in_range(installed, tested[name])
        rows.append(row)
    return rows


def _chattune() -> dict:
    return {"version": __version__, "git": _git_commit(Path(__file__).resolve().parents[2])}


def _git_commit(root: Path) -> str | None:
    """The checkout's commit (+ ", dirty"), or None when chattune is installed, not checked out."""
    if not (root / ".git").exists() or not shutil.which("git"):
        return None
    commit = _git(root, "rev-parse", "--short=10", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit + (", dirty" if dirty else "")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=10, check=True)
    return done.stdout.strip()


def _platform() -> dict:
    try:
        distro = platform.freedesktop_os_release().get("PRETTY_NAME")
    except (OSError, AttributeError):  # not Linux, or no os-release
        distro = None
    return {"platform": platform.platform(), "machine": platform.machine(), "os": distro}


def _cpu() -> dict:
    info = _cpuinfo()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = set(info.get("flags", "").split())
    cpu = {"model": info.get("model name") or platform.processor() or None,
           "cores": os.cpu_count(), "usable_cores": usable,
           "flags": [flag for flag in CPU_FLAGS if flag in flags]}
    if versions.installed_version("torch"):
        from chattune.model.load import cpu_has_fast_bf16

        cpu["fast_bf16"] = cpu_has_fast_bf16()  # AMX or AVX512-BF16, as training decides it
    else:
        cpu["fast_bf16"] = None
    return cpu


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} elsewhere)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _gpu() -> dict:
    if not versions.installed_version("torch"):
        return {"available": False, "note": "torch not installed"}
    import torch

    gpu: dict = {"available": torch.cuda.is_available(), "cuda_build": torch.version.cuda,
                 "hip_build": getattr(torch.version, "hip", None)}
    if gpu["available"]:
        gpu["devices"] = [_device(torch, index) for index in range(torch.cuda.device_count())]
        gpu["bf16"] = torch.cuda.is_bf16_supported()
        gpu["cudnn"] = torch.backends.cudnn.version()
    return gpu


def _device(torch, index: int) -> dict:
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "memory_gib": round(props.total_memory / _GIB, 1),
            "capability": f"{props.major}.{props.minor}"}


def caches() -> list[dict]:
    """$CHATTUNE_HOME, the Hugging Face hub cache and pip's cache, each with its free disk."""
    from chattune.model_sources import hub_cache_dir
    from chattune.models import chattune_home

    folders = [("CHATTUNE_HOME", str(chattune_home())), ("HF hub cache", hub_cache_dir()),
               ("pip cache", _pip_cache_dir())]
    return [_folder(name, Path(path).expanduser()) for name, path in folders]


def _pip_cache_dir() -> str:
    """pip's default cache folder, or PIP_CACHE_DIR (a pip.conf setting is not read)."""
    if os.environ.get("PIP_CACHE_DIR"):
        return os.environ["PIP_CACHE_DIR"]
    if sys.platform == "win32":
        return os.path.join(os.environ.get("LOCALAPPDATA", "~"), "pip", "Cache")
    if sys.platform == "darwin":
        return "~/Library/Caches/pip"
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "pip")


def _folder(name: str, path: Path) -> dict:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # a cache not made yet: the disk it would be made on
    free = shutil.disk_usage(existing).free if existing.exists() else None
    return {"name": name, "path": str(path), "exists": path.exists(),
            "free_gib": None if free is None else round(free / _GIB, 1)}


def builtin_models() -> list[dict]:
    """Each built-in model: converted in $CHATTUNE_HOME, its GGUF present, or what brings it."""
    from chattune.model.gguf_base import COMPLETE_MARKER
    from chattune.models import (
        BUILTIN_MODELS,
        BUILTIN_PREFIX,
        ModelSourceError,
        builtin_cache_dir,
        builtin_gguf_path,
    )

    rows = []
    for key in BUILTIN_MODELS:
        folder = builtin_cache_dir(key)
        row = {"name": BUILTIN_PREFIX + key, "converted": (folder / COMPLETE_MARKER).is_file(),
               "folder": str(folder)}
        try:
            row["gguf"] = str(builtin_gguf_path(key))
        except ModelSourceError as err:
            row["gguf"], row["missing"] = None, str(err)
        rows.append(row)
    return rows


def to_markdown(report: dict) -> str:
    """The report as Markdown, ready to paste into an issue."""
    lines = ["### chattune env", "", *_summary_lines(report), "",
             "| library | installed | vs tested |", "| --- | --- | --- |"]
    for row in report["libraries"]:
        outside = row.get("in_range") is False and row["name"] in versions.CORE
        note = ", outside the tested range (same major.minor)" if outside else ""
        lines.append(f"| {row['name']} | {row['installed'] or '-'} | {row['mark']}{note} |")
    lines += ["", "| cache | path | free |", "| --- | --- | --- |"]
    for folder in _rows(report["caches"]):
        free = "?" if folder["free_gib"] is None else f"{folder['free_gib']} GiB"
        made = "" if folder["exists"] else " (not made yet)"
        lines.append(f"| {folder['name']} | `{folder['path']}`{made} | {free} |")
    lines += ["", "built-in models:"]
    lines += [f"- {row['name']}: {_model_state(row)}" for row in _rows(report["builtin_models"])]
    return "\n".join(lines) + "\n"


def _rows(value) -> list[dict]:
    """A probe's list, or one row holding its error."""
    if isinstance(value, dict) and "error" in value:
        return [{"name": "error", "path": value["error"], "exists": True, "free_gib": None,
                 "converted": False, "gguf": None, "missing": value["error"]}]
    return value


def _summary_lines(report: dict) -> list[str]:
    own, py, plat = report["chattune"], report["python"], report["platform"]
    commit = own.get("git") or "unknown: not a checkout"
    version = own.get("error") or f"{own['version']} (git {commit})"
    where = plat.get("error") or plat["platform"] + (f" ({plat['os']})" if plat.get("os") else "")
    return [f"- chattune: {version}",
            f"- Python: {py['version']} ({py['implementation']}, `{py['executable']}`)",
            f"- platform: {where}", f"- CPU: {_cpu_line(report['cpu'])}",
            f"- GPU: {_gpu_line(report['gpu'])}"]


def _cpu_line(cpu: dict) -> str:
    if "error" in cpu:
        return cpu["error"]
    fast = {True: "yes", False: "no", None: "unknown (torch not installed)"}[cpu["fast_bf16"]]
    flags = ", ".join(cpu["flags"]) or "none of " + ", ".join(CPU_FLAGS)
    return (f"{cpu['model'] or 'unknown model'}, {cpu['cores']} cores "
            f"({cpu['usable_cores']} usable); "
            f"fast bf16 (AMX or AVX512-BF16): {fast}; flags: {flags}")


def _gpu_line(gpu: dict) -> str:
    if "error" in gpu or "note" in gpu:
        return gpu.get("error") or gpu["note"]
    build = f"torch CUDA build {gpu['cuda_build'] or 'none'}"
    build += f", HIP {gpu['hip_build']}" if gpu.get("hip_build") else ""
    if not gpu["available"]:
        return f"none (torch.cuda.is_available() is False; {build})"
    devices = "; ".join(f"{d['name']} ({d['memory_gib']} GiB, sm {d['capability']})"
                        for d in gpu["devices"])
    return f"{devices}; {build}, cuDNN {gpu['cudnn']}, bf16: {'yes' if gpu['bf16'] else 'no'}"


def _model_state(row: dict) -> str:
    if row["converted"]:
        return f"converted (`{row['folder']}`)"
    if row["gguf"]:
        return f"GGUF present (`{row['gguf']}`), converted on first use"
    return f"not present: {row['missing'].split('. ')[0]}"  # what brings it, not the details
