"""Every config combination composes, builds, and a typo names the bad key."""

from __future__ import annotations

import itertools

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

from tests.conftest import ROOT, compose_train_config


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


# Runtime groups combine freely; a network goes with the data it reads (time frames as channels
# for the AIF ResUNet, one weighted image for the myocardium U-Net).
RUNTIME = list(itertools.product(choices("trainer"), choices("logger"), choices("callbacks")))
MAPPING_DATA = ("t1_native", "t2", "post_contrast")
MODEL_DATA = [
    (model, data)
    for model in choices("model")
    for data in (MAPPING_DATA if model == "unet_myo" else ("aif",))
]


def resolve(cfg: DictConfig) -> dict:
    """Resolve every interpolation of the job config (Hydra's own sweep keys aside)."""
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    return OmegaConf.to_container(job, resolve=True)


@pytest.mark.parametrize("choice", RUNTIME, ids=["-".join(c) for c in RUNTIME])
def test_every_runtime_combination_composes_and_resolves(choice, tmp_path):
    trainer, logger, callbacks = choice
    overrides = [f"trainer={trainer}", f"logger={logger}", f"callbacks={callbacks}"]
    resolve(compose_train_config(overrides, output_dir=tmp_path))


@pytest.mark.parametrize("model, data", MODEL_DATA, ids=["-".join(c) for c in MODEL_DATA])
def test_every_model_with_its_data_composes_and_resolves(model, data, tmp_path):
    resolve(compose_train_config([f"model={model}", f"data={data}"], output_dir=tmp_path))


@pytest.mark.parametrize("preset", ["experiment", "debug"])
def test_every_preset_composes(preset, tmp_path):
    for path in sorted((ROOT / "conf" / preset).glob("*.yaml")):
        cfg = compose_train_config([f"{preset}={path.stem}"], output_dir=tmp_path)
        resolve(cfg)


@pytest.mark.parametrize("model, outputs", [("resunet3cs", 3), ("resunet2cs", 1)])
def test_models_build_from_config(model, outputs, tmp_path):
    cfg = compose_train_config([f"model={model}"], output_dir=tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    assert module.net.head.out_channels == outputs
    assert cfg.tags == [model, "seed42"]
    n_params = sum(p.numel() for p in module.parameters())
    assert 6.0e6 < n_params < 7.0e6, "paper configuration: 8 modules, 128 filters (~6.5 M)"


def test_typo_in_override_names_the_key(tmp_path):
    with pytest.raises(ConfigCompositionException, match="lerning_rate"):
        compose_train_config(["model.optimizer.lerning_rate=0.1"], output_dir=tmp_path)


def test_unknown_model_names_the_choice(tmp_path):
    with pytest.raises(ConfigCompositionException, match="resunet4cs"):
        compose_train_config(["model=resunet4cs"], output_dir=tmp_path)
