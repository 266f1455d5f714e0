"""Same seed, same data and config on CPU -> the same weights and the same metrics, bit for bit."""

from __future__ import annotations

import json

import torch

from tests.conftest import TINY, compose_train_config
from train import train

SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",  # 3 optimiser steps with shuffling and flips
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "export=none",
    "callbacks.prediction_figure=null",
]


def tiny_run(tmp_path, data_dir, name: str, seed: int) -> tuple[dict, dict]:
    """Train and test the tiny model in ``tmp_path/name``; returns metrics and final weights."""
    out = tmp_path / name
    paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={tmp_path / 'artifacts'}"]
    cfg = compose_train_config([*TINY, *SHORT, *paths, f"seed={seed}"], output_dir=out)
    metrics = train(cfg)
    weights = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return metrics, weights


def test_same_seed_gives_identical_weights_and_metrics(tmp_path, data_dir):
    first_metrics, first_weights = tiny_run(tmp_path, data_dir, "first", seed=5)
    second_metrics, second_weights = tiny_run(tmp_path, data_dir, "second", seed=5)

    assert first_metrics == second_metrics  # exact float equality, every logged metric
    assert first_weights.keys() == second_weights.keys()
    for key, value in first_weights.items():
        assert torch.equal(value, second_weights[key]), key
    record = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert record["metrics"]["test/lv_dice"] == first_metrics["test/lv_dice"]
    assert record["seed"] == 5

    other_metrics, other_weights = tiny_run(tmp_path, data_dir, "other", seed=6)
    assert other_metrics["train/loss"] != first_metrics["train/loss"]
    assert any(not torch.equal(v, other_weights[k]) for k, v in first_weights.items())
