"""The ``Example:`` blocks in docstrings run as written (MONAI-style examples stay true).

Examples that need a trained artifact are marked ``# doctest: +SKIP`` and not listed here.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

from tests.conftest import ROOT

PACKAGES = ("formats", "quantification", "datamodules", "lightning_modules", "callbacks", "exports",
            "evaluation", "sweeps", "benchmarks")  # fmt: skip


def modules_with_examples() -> list[str]:
    """Every module of the project's packages whose source has a ``>>>`` example."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>> " in path.read_text():
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


MODULES_WITH_EXAMPLES = modules_with_examples()


def test_the_examples_are_found():
    assert {"formats.atomic_file", "lightning_modules.networks.resunet"} <= set(
        MODULES_WITH_EXAMPLES
    )


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
