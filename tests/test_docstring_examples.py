"""The ``Example:`` blocks in docstrings run as written (MONAI-style examples stay true).

Examples that need a trained artifact are marked ``# doctest: +SKIP`` and not listed here.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES_WITH_EXAMPLES = [
    "callbacks.int8_quantization",
    "datamodules.synthetic.rician_noise",
    "datamodules.mapping_transforms",
    "datamodules.transforms",
    "formats.atomic_file",
    "lightning_modules.boundary_metrics",
    "lightning_modules.losses",
    "lightning_modules.networks.paper_networks",
    "lightning_modules.networks.resunet",
    "lightning_modules.networks.unet",
    "lightning_modules.segmentation_task",
    "quantification.relaxometry",
]


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"
