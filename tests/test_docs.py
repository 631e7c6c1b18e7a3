"""The docs match the code: the generated config reference and module map are current, every
config key and every module is documented, every relative link resolves, the README stays short."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from chattune.cli import main
from chattune.config import RunConfig
from chattune.reference import (
    CONFIG_COMMAND,
    MAP_BEGIN,
    MAP_END,
    MODULES_COMMAND,
    module_map_markdown,
)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "src" / "chattune"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _section(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key, walked here rather than taken from the generator; list items as key[].sub."""
    keys = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            keys += _keys(section, f"{prefix}{name}.")
            continue
        keys.append(prefix + name)
        for arg in typing.get_args(field.annotation):
            item = _section(typing.get_args(arg)[0]) if typing.get_origin(arg) is list else None
            if item is not None:
                keys += _keys(item, f"{prefix}{name}[].")
            if _section(arg) is not None:  # an optional subsection, e.g. data.retrieval
                keys += _keys(arg, f"{prefix}{name}.")
    return keys


def test_configuration_md_is_the_generated_reference(capsys):
    assert main(["config", "--reference"]) == 0
    generated = capsys.readouterr().out
    written = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert written == generated, f"docs/configuration.md is stale: regenerate it with `{CONFIG_COMMAND}`"


def test_every_config_key_is_in_the_reference():
    written = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = _keys(RunConfig)
    assert {"seed", "model.name", "data.sources[].weight", "lora.r", "train.lr"} <= set(keys)
    missing = [key for key in keys if f"| `{key}` |" not in written]
    assert not missing, f"keys without a row in docs/configuration.md: {missing}; run `{CONFIG_COMMAND}`"


def test_reference_refuses_a_config(capsys):
    assert main(["config", "configs/demo.yaml", "--reference"]) == 2
    assert "--reference" in capsys.readouterr().err


def test_module_map_lists_every_module():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert MAP_BEGIN in text and MAP_END in text, "docs/architecture.md lost its module map markers"
    block = text.split(MAP_BEGIN, 1)[1].split(MAP_END, 1)[0]
    listed = set(re.findall(r"\[`(chattune/[\w/]+\.py)`\]", block))
    present = {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py")}
    assert not present - listed, f"modules missing from docs/architecture.md: {sorted(present - listed)}; run `{MODULES_COMMAND}`"
    assert not listed - present, f"docs/architecture.md lists modules that are gone: {sorted(listed - present)}; run `{MODULES_COMMAND}`"
    assert block.strip("\n") == module_map_markdown(PACKAGE).strip("\n"), (
        f"a module's docstring changed since docs/architecture.md was written: run `{MODULES_COMMAND}`"
    )


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name})" not in readme]
    assert not unlinked, f"docs pages missing from the README's Documentation list: {unlinked}"


def test_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 12 * 1024, "README.md is over 12 KB: move the detail into docs/"
    first_block = readme.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block
