"""The layers of DESIGN.md, checked on every import statement of the source tree.

formats -> quantification -> (datamodules, lightning_modules, callbacks) and exports: a module
imports only from its own layer and those below; the scanner side (formats, quantification,
exports) never imports training frameworks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

TRAINING = {"datamodules", "lightning_modules", "callbacks"}
ALLOWED = {
    "formats": {"formats"},
    "quantification": {"formats", "quantification"},
    "exports": {"formats", "quantification", "exports"},
    **{package: {"formats", "quantification"} | TRAINING for package in TRAINING},
}
PROJECT = set(ALLOWED) | {"evaluation", "sweeps", "benchmarks", "train", "evaluate", "tests"}
SCANNER_SIDE = {"formats", "quantification", "exports"}
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
