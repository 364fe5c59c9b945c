"""docs/architecture.md names every module's medidiff imports and lists modules in stage order; the code must agree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the one documented exception to "a module imports only modules listed before it": io and dicom form one stage
BACKWARD = {("io", "dicom")}


def _documented() -> dict[str, set[str] | None]:
    """Module -> the imports its entry names (None where the entry gives no list), in listed order."""
    text = (REPO / "docs/architecture.md").read_text(encoding="utf-8")
    section = text.split("## Modules", 1)[1].split("**Public API.**", 1)[0]
    entries = re.split(r"\n- `", section)[1:]
    out: dict[str, set[str] | None] = {}
    for entry in entries:
        name = entry.split("`", 1)[0]
        tail = entry.split("Imports", 1)[1] if "Imports" in entry else None
        if tail is None or "inside the handler" in entry:
            out[name] = None
        elif tail.lstrip().startswith(("nothing", "no medidiff")):
            out[name] = set()
        else:
            out[name] = set(re.findall(r"`([a-z_]+)`", tail.split(".\n", 1)[0].split(". ", 1)[0]))
    return out


def _actual(name: str) -> set[str]:
    tree = ast.parse((REPO / "medidiff" / f"{name}.py").read_text(encoding="utf-8"))
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "medidiff":
                mods.update(a.name for a in node.names if a.name != "__version__")
            elif node.module.startswith("medidiff."):
                mods.add(node.module.split(".")[1])
    return mods - {name}


def test_every_module_is_documented_with_its_imports() -> None:
    documented = _documented()
    modules = {p.stem for p in (REPO / "medidiff").glob("*.py") if p.stem != "__init__"}
    assert set(documented) == modules
    for name, imports in documented.items():
        if imports is not None:
            assert imports == _actual(name), name


def test_modules_import_only_modules_listed_before_them() -> None:
    order = list(_documented())
    for position, name in enumerate(order):
        later = {m for m in _actual(name) if order.index(m) > position}
        assert later <= {m for n, m in BACKWARD if n == name}, (name, later)
