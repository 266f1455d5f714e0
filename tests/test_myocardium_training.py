"""Myocardium U-Net training with transfer learning: presets, real Trainers on tiny phantoms."""

from __future__ import annotations

import json

import hydra
import numpy as np
import pytest

from deployment.artifact import load_artifact
from tests.conftest import ROOT, compose_train_config
from tests.test_configs import resolve
from train import train

TRAINING = {  # preset -> (modality, network name, artifact file, fine-tuned)
    "t1_native_pretrain": (None, "N0", "myo_unet_n0.ts", False),  # synthetic, any contrast
    "t2_finetune": ("t2", "FT-T2", "myo_unet_ft_t2.ts", True),
    "t2_scratch": ("t2", "SC-T2", "myo_unet_sc_t2.ts", False),
    "post_finetune": ("post_contrast", "FT-post", "myo_unet_ft_post.ts", True),
    "post_scratch": ("post_contrast", "SC-post", "myo_unet_sc_post.ts", False),
}
EVALUATION = {  # docs/method.md §B3: experiment -> (quantity, network)
    1: ("t2", "N0"),
    2: ("t2", "FT-T2"),
    3: ("t2", "SC-T2"),
    4: ("ecv", "N0"),
    5: ("ecv", "FT-post"),
    6: ("ecv", "SC-post"),
}


@pytest.mark.parametrize("preset", sorted(TRAINING))
def test_training_presets_compose_and_pair_network_and_data(preset, tmp_path):
    cfg = resolve(compose_train_config([f"experiment={preset}"], output_dir=tmp_path))
    modality, network, artifact, finetuned = TRAINING[preset]
    if modality is None:  # N0: contrast-agnostic synthetic short-axis images
        assert cfg["data"]["_target_"].endswith("ShortAxisSynthesisDataModule")
    else:
        assert cfg["data"]["modality"] == modality
    assert cfg["export"]["model_name"] == network
    assert cfg["export"]["artifact_path"].endswith(f"artifacts/{artifact}")
    assert cfg["export"]["task"] == "myocardium_segmentation"
    assert cfg["callbacks"]["model_checkpoint"]["monitor"] == cfg["optimized_metric"] == "val/dsc"
    assert bool(cfg["finetune"]["pretrained"]) == finetuned
    if finetuned:  # the N0 artifact written by t1_native_pretrain
        assert cfg["finetune"]["pretrained"].endswith("artifacts/myo_unet_n0.ts")
    module = hydra.utils.instantiate(compose_train_config([f"experiment={preset}"]).model)
    assert module.net.n_classes == 2 and module.net.in_channels == 1


def test_finetune_and_scratch_presets_share_data_and_budget(tmp_path):
    for target in ("t2", "post"):
        ft, sc = (
            resolve(compose_train_config([f"experiment={target}_{kind}"], output_dir=tmp_path))
            for kind in ("finetune", "scratch")
        )
        assert ft["data"] == sc["data"] and ft["trainer"] == sc["trainer"]
        assert ft["model"] == sc["model"]


@pytest.mark.parametrize("exp", sorted(EVALUATION))
def test_evaluation_presets_pair_network_and_modality(exp, tmp_path):
    cfg = resolve(compose_train_config([f"experiment=exp{exp}"], output_dir=tmp_path))
    evaluation = cfg["evaluation"]
    quantity, network = EVALUATION[exp]
    assert (evaluation["exp"], evaluation["quantity"], evaluation["network"]) == (
        exp,
        quantity,
        network,
    )
    modalities = ["t2"] if quantity == "t2" else ["t1_native", "post_contrast"]
    assert evaluation["modalities"] == modalities == list(evaluation["artifacts"])
    # the network under test segments the target modality; every artifact is a training preset's
    artifacts_dir = cfg["paths"]["artifacts_dir"]
    exported = {f"{artifacts_dir}/{file}": name for _, name, file, _ in TRAINING.values()}
    assert exported[evaluation["artifacts"][modalities[-1]]] == network
    assert all(path in exported for path in evaluation["artifacts"].values())


def test_every_experiment_file_is_covered_here():
    names = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    ours = {*TRAINING, *(f"exp{i}" for i in EVALUATION), "myocardium_base"}
    assert ours <= names


@pytest.mark.parametrize("preset", ["t1_native_pretrain", "t2_scratch", "post_scratch"])
def test_fast_dev_run_for_each_modality_exports_a_myocardium_artifact(
    preset, tiny_myocardium_config, tmp_path
):
    metrics = train(tiny_myocardium_config([f"experiment={preset}", "trainer.fast_dev_run=true"]))
    assert 0.0 <= metrics["test/dsc"] <= 1.0 and metrics["test/n_images"] > 0
    assert np.isfinite(metrics["train/loss"])
    # a check run: exported into its run dir only, the deployed artifact is left alone
    assert not (tmp_path / "artifacts" / TRAINING[preset][2]).exists()
    artifact = load_artifact(
        tmp_path / "run" / "export" / TRAINING[preset][2], expected_task="myocardium_segmentation"
    )
    assert artifact.metadata["check_run"][0] == "trainer.fast_dev_run"
    meta = artifact.metadata
    assert meta["model"] == TRAINING[preset][1]
    assert meta["classes"] == ["background", "myocardium"] and meta["output"] == "softmax"
    assert meta["input_shape"] == [None, 1, 256, 256]
    assert meta["preprocessing"]["size"] == [256, 256]
    assert meta["preprocessing"]["percentiles"] == [1.0, 99.0]
    probability = artifact.probabilities(np.random.default_rng(0).random((2, 1, 256, 256)))
    assert probability.shape == (2, 2, 256, 256)
    np.testing.assert_allclose(probability.sum(1), 1.0, atol=1e-5)


def test_pretrain_then_finetune_from_its_checkpoint_and_its_artifact(
    tiny_myocardium_config, tmp_path
):
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    train(tiny_myocardium_config(["experiment=t1_native_pretrain", *short], run="n0"))
    (checkpoint,) = (tmp_path / "n0" / "checkpoints").glob("epoch*.ckpt")

    from_ckpt = [
        "experiment=t2_finetune",
        f"finetune.pretrained={checkpoint}",
        "finetune.freeze_levels=1",
        "finetune.pretrained_lr=1e-4",
        "trainer.fast_dev_run=true",
    ]
    train(tiny_myocardium_config(from_ckpt, run="ft_ckpt"))
    report = json.loads((tmp_path / "ft_ckpt" / "finetune_report.json").read_text())
    assert report["source"] == str(checkpoint)
    assert not report["left_random"] and not report["skipped"]
    assert report["frozen"] and all(n.startswith("encoders.0.") for n in report["frozen"])

    # default finetune.pretrained: the artifact N0 exported (export.freeze=false keeps the names)
    train(tiny_myocardium_config(["experiment=post_finetune", "trainer.fast_dev_run=true"], "ft"))
    report = json.loads((tmp_path / "ft" / "finetune_report.json").read_text())
    assert report["source"].endswith("artifacts/myo_unet_n0.ts")
    assert len(report["loaded"]) == 66 and not report["left_random"]
