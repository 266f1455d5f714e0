"""Shared fixtures: the real Hydra config, composed and shrunk to run in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

# A ResUNet of ~30 k parameters and a phantom set of 8 patients: the whole loop in seconds (the
# paper's network, not the `make train` default BasicUNet: the export, int8 and index tests use
# its module names; a later `model=resunet2cs` still wins).
TINY = [
    "model=resunet3cs",
    "model.net.input_planes=8",
    "model.net.planes=[8,8]",
    "model.net.modules_per_level=[1,1]",
    "data.n_patients=8",
    "data.batch_size=4",
    "data.val_fraction=0.125",
    "data.test_fraction=0.125",
    "logger=none",
    "callbacks.progress.rich_on_tty=false",
    "trainer.enable_model_summary=false",
]


def compose_train_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config of ``python train.py <overrides>``, with run outputs in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One phantom cache for the whole session (generated on first use)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_config(tmp_path: Path, data_dir: Path):
    """Build a tiny, fast train config: ``tiny_config(["model=resunet2cs", ...])``."""

    def make(overrides: list[str] = ()) -> DictConfig:
        paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={tmp_path / 'artifacts'}"]
        return compose_train_config([*TINY, *paths, *overrides], output_dir=tmp_path)

    return make


# A U-Net of ~7.5 k parameters on a 4-patient mapping phantom set: a myocardium run in seconds.
TINY_MYOCARDIUM = [
    "model.net.filters=[4,8,16]",
    "data.batch_size=4",
    "logger=none",
    "callbacks.progress.rich_on_tty=false",
    "trainer.enable_model_summary=false",
]
TINY_MAPPING_DATA = ["data.n_patients=4", "data.val_fraction=0.25", "data.test_fraction=0.25"]
TINY_SYNTHESIS_DATA = [  # experiment=t1_native_pretrain (data=short_axis_synthesis)
    "data.pool_size=8",
    "data.val_images=4",
    "data.test_images=4",
    "data.samples_per_epoch=8",
    "data.crop_size=96",
]


@pytest.fixture
def tiny_myocardium_config(tmp_path: Path, data_dir: Path):
    """A tiny myocardium run config: ``tiny_myocardium_config(["experiment=t2_scratch"])``;
    ``run`` names a sub-directory of ``tmp_path`` for the run outputs (artifacts are shared)."""

    def make(overrides: list[str] = (), run: str = "run") -> DictConfig:
        paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={tmp_path / 'artifacts'}"]
        synthesis = "experiment=t1_native_pretrain" in overrides
        data = TINY_SYNTHESIS_DATA if synthesis else TINY_MAPPING_DATA
        return compose_train_config(
            [*TINY_MYOCARDIUM, *data, *paths, *overrides], output_dir=tmp_path / run
        )

    return make
