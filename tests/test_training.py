"""Real Lightning Trainers, in-process, on a tiny ResUNet and a tiny phantom set."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict

from deployment.artifact import load_artifact
from deployment.default_model import DEFAULT_AIF_MODEL
from tests.conftest import TINY, compose_train_config
from train import train


@pytest.mark.parametrize("model", ["resunet3cs", "resunet2cs"])
def test_fast_dev_run_fits_and_tests(model, tiny_config, tmp_path):
    cfg = tiny_config([f"model={model}", "trainer.fast_dev_run=true"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/lv_dice"] <= 1.0
    assert ("test/rv_dice" in metrics) == (model == "resunet3cs")
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "figures" / "test_predictions.png").stat().st_size > 0


def test_make_trains_default_network_tests_and_deploys_it_under_the_default_name(
    data_dir, tmp_path
):
    tiny_data = [o for o in TINY if not o.startswith("model")]  # the default model, shrunk
    overrides = [
        *tiny_data,
        "model.net.features=[4,4,8,8,16,4]",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "callbacks.prediction_figure=null",
        f"paths.data_dir={data_dir}",
        f"paths.artifacts_dir={tmp_path / 'art'}",
    ]
    cfg = compose_train_config(overrides, output_dir=tmp_path / "run")
    with open_dict(cfg):  # as in `python train.py`: Hydra's own node is not in the job config
        del cfg["hydra"]
    metrics = train(cfg)
    assert 0.0 <= metrics["test/lv_dice"] <= 1.0
    deployed = load_artifact(DEFAULT_AIF_MODEL, artifacts_dir=tmp_path / "art")
    assert deployed.metadata["model"] == "monai_basic_unet3cs"
    assert deployed.n_classes == 3


def test_split_is_by_patient_and_written_to_the_run_dir(tiny_config, tmp_path):
    cfg = tiny_config(["trainer.fast_dev_run=true"])
    train(cfg)
    split = json.loads((tmp_path / "split.json").read_text())
    patients = {name: {case.split("_")[0] for case in cases} for name, cases in split.items()}
    assert patients["train"] and patients["val"] and patients["test"]
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_resuming_from_last_ckpt_continues_the_step_count(tiny_config, tmp_path):
    limits = ["model/scheduler=step", "trainer.limit_train_batches=2",
              "trainer.limit_val_batches=1", "test=false"]  # fmt: skip
    first = tiny_config([*limits, "trainer.max_epochs=2"])
    train(first)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4

    resumed = tiny_config([*limits, "trainer.max_epochs=3", f"ckpt_path={last}"])
    train(resumed)
    state = torch.load(last, weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] == 6


def test_a_finished_one_cycle_schedule_cannot_be_extended_by_resuming(tiny_config, tmp_path):
    limits = ["trainer.limit_train_batches=5", "trainer.limit_val_batches=1", "test=false"]
    train(tiny_config([*limits, "trainer.max_epochs=2"]))  # the default one-cycle schedule
    last = tmp_path / "checkpoints" / "last.ckpt"
    resumed = tiny_config([*limits, "trainer.max_epochs=3", f"ckpt_path={last}"])
    with pytest.raises(ValueError, match=r"schedule covers \d+ steps, this run needs \d+"):
        train(resumed)
