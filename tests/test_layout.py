"""The layout shows the architecture: who may import whom, and how big a module gets."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONNECTOR = ROOT / "connector"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, at module level)`` of every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
    return out


def _production_modules() -> list[Path]:
    return [p for p in CONNECTOR.rglob("*.py") if "devtools" not in p.relative_to(CONNECTOR).parts]


def test_devtools_are_never_imported_by_production_modules() -> None:
    offenders = []
    for path in _production_modules():
        for module, top_level in _imports(path):
            if not module.startswith("connector.devtools"):
                continue
            # The CLI's demo command may import the demo, when it runs (not at import).
            if path == CONNECTOR / "cli" / "demo.py" and not top_level:
                continue
            offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_importing_the_cli_loads_no_devtools() -> None:
    code = "import sys, connector.cli; print(sorted(m for m in sys.modules if 'devtools' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_adapters_import_their_sdks() -> None:
    owners = {"label_studio_sdk": "labelstudio", "boto3": "storage"}
    offenders = []
    for path in _production_modules():
        package = path.relative_to(CONNECTOR).parts[0]
        for module, _ in _imports(path):
            root = module.split(".")[0]
            if root in owners and package != owners[root]:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


SQL = re.compile(r"SELECT .* FROM |INSERT INTO |UPDATE \w+ SET |DELETE FROM |\.execute\(")


def test_no_sql_outside_the_state_package() -> None:
    # The labeled cache keeps its own small index db (its entries, not the state).
    exempt = {CONNECTOR / "storage" / "cache.py"}
    offenders = [
        str(path.relative_to(ROOT))
        for path in _production_modules()
        if path.relative_to(CONNECTOR).parts[0] != "state"
        and path not in exempt
        and SQL.search(path.read_text())
    ]
    assert offenders == []


def test_no_module_past_about_400_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in [*CONNECTOR.rglob("*.py"), *(ROOT / "strategies").rglob("*.py")]
    }
    assert {p: n for p, n in sizes.items() if n > 420} == {}
