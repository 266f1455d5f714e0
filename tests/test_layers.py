"""The layers of docs/architecture.md, checked on every import statement of the source tree.

formats -> quantification -> deployment -> (datamodules, lightning_modules, callbacks) and exports:
a module imports only from its own layer and those below; the scanner side (formats,
quantification, deployment, exports) never imports training frameworks; no import cycle between
modules anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

TRAINING = {"datamodules", "lightning_modules", "callbacks"}
BELOW_TRAINING = {"formats", "quantification", "deployment"}
ALLOWED = {
    "formats": {"formats"},
    "quantification": {"formats", "quantification"},
    "deployment": {"formats", "quantification", "deployment"},
    "exports": BELOW_TRAINING | {"exports"},
    **{package: BELOW_TRAINING | TRAINING for package in TRAINING},
}
PROJECT = set(ALLOWED) | {"evaluation", "sweeps", "benchmarks", "train", "evaluate", "tests"}
SCANNER_SIDE = {"formats", "quantification", "deployment", "exports"}
NOT_ON_THE_SCANNER = {"pytorch_lightning", "lightning", "hydra", "omegaconf", "wandb", "monai"}


def imported_packages(path: Path) -> set[str]:
    """First name of every module that ``path`` imports (absolute imports)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_its_own_layer_and_those_below(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        imported = imported_packages(path)
        upward = (imported & PROJECT) - ALLOWED[package]
        assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)} (a layer above)"
        if package in SCANNER_SIDE:
            banned = imported & NOT_ON_THE_SCANNER
            assert not banned, f"{path.relative_to(ROOT)} imports {sorted(banned)} (scanner side)"


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules (dotted names in ``known``) that ``path`` imports, lazily or not."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & known


def test_no_module_imports_itself_back_through_others():
    packages = sorted(set(ALLOWED) | {"evaluation", "sweeps"})
    paths = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for package in packages
        for path in (ROOT / package).rglob("*.py")
    }
    graph = {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = [*trail[trail.index(target) :], target] if target in trail else [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
