"""The library versions chattune is tested with, and the import-time warning when a core one is off.

The tested set ships inside the package (tested_versions.json, generated from the repo's
requirements.lock and the Makefile's own pins, torch and llama-cpp-python; tests/test_env.py keeps
them equal), so an installed chattune knows it without the repo. The range rule: an installed
version is inside the tested range when its major.minor equals the tested one's (2.13.1 for a
tested 2.13.0 is inside, 2.14.0 or 2.12.3 is not); local build tags such as `+cpu` or `+cu121`
are ignored. `import chattune` warns once (an UntestedVersionWarning, one line) naming each core
library outside its range; it reads versions with importlib.metadata only, imports none of the
libraries, and never raises. This module does not build the environment report (chattune/env.py).
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

TESTED_FILE = Path(__file__).with_name("tested_versions.json")
REGENERATE = "python -m chattune.versions requirements.lock Makefile"
CORE = ("torch", "transformers", "peft", "trl", "datasets", "accelerate")
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", re.M)
_MAKE_PIN = re.compile(r"^\w+\s*[?:]?=\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.M)
_warned = False


class UntestedVersionWarning(UserWarning):
    """A core library's installed version is outside the tested range (see chattune.versions)."""


def tested_from_lock(lock_text: str, makefile_text: str = "") -> dict[str, str]:
    """`name==version` lines of requirements.lock, plus the Makefile's own pins (`TORCH ?=
    torch==X`, `LLAMA_CPP := llama-cpp-python==X`: installed apart from the lock)."""
    pins = _PIN.findall(lock_text) + _MAKE_PIN.findall(makefile_text)
    return dict(sorted((name.lower(), version) for name, version in pins))


def tested_versions() -> dict[str, str]:
    """The shipped tested set; {} when the file is missing or unreadable."""
    try:
        return dict(json.loads(TESTED_FILE.read_text(encoding="utf-8"))["versions"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except Exception:  # not installed, or broken metadata: the same to a report
        return None


def _release(version: str) -> tuple[int, ...]:
    public = version.split("+", 1)[0]
    return tuple(int(part) for part in re.findall(r"\d+", public)[:2])


def in_range(installed: str, tested: str) -> bool:
    """Same major.minor (the rule in the module docstring)."""
    return _release(installed) == _release(tested)


def mark(installed: str | None, tested: str | None) -> str:
    """'tested', 'differs (tested: X)' or 'not installed' (the local build tag does not count)."""
    if installed is None:
        return "not installed"
    if tested is None:
        return "differs (tested: none)"
    return "tested" if installed.split("+", 1)[0] == tested else f"differs (tested: {tested})"


def out_of_range() -> list[str]:
    """One phrase per installed core library outside its tested range."""
    tested = tested_versions()
    found = []
    for name in CORE:
        version = installed_version(name)
        if version and name in tested and not in_range(version, tested[name]):
            found.append(f"{name} {version} (tested: {tested[name]})")
    return found


def warn_untested() -> None:
    """Warn once per process when a core library is outside its tested range; never raises."""
    global _warned
    if _warned:
        return
    _warned = True
    try:
        found = out_of_range()
        if found:  # filename "chattune", line 0: the warning prints as one line, no source line
            message = (f"chattune is tested with other versions: {', '.join(found)}; "
                       "if something breaks, `chattune env` shows the tested set")
            warnings.warn_explicit(message, UntestedVersionWarning, "chattune", 0,
                                   module="chattune")
    except Exception:  # a version check must never stop `import chattune`
        pass


def main(argv: list[str]) -> int:
    """`python -m chattune.versions requirements.lock Makefile`: rewrite tested_versions.json."""
    lock, makefile = (Path(arg).read_text(encoding="utf-8") for arg in argv[:2])
    body = {"generated_by": REGENERATE, "versions": tested_from_lock(lock, makefile)}
    TESTED_FILE.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {TESTED_FILE} ({len(body['versions'])} versions)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
