"""Which model is deployed, end to end: real training runs, check runs and a multirun.

A real training run deploys its export through the artifact index and logs it to W&B (offline);
check runs after it leave the deployed file byte-identical; a 3-job multirun deploys the job its
stated rule picks, whatever order the jobs finished in; ``make promote`` deploys another job and
rolls back. Tiny ResUNet and phantom set of ``tests/conftest.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import open_dict

from deployment.artifact import read_metadata
from deployment.artifact_index import ArtifactIndex, file_sha256
from sweeps.promotion import main as promote_main
from sweeps.run_summary import read_run_record
from tests.conftest import TINY, compose_train_config
from tests.test_sweeps import (
    ONE_BATCH,
    read_offline_wandb_run,
    read_offline_wandb_runs,
    run_multirun,
)
from train import train

NAME = "aif_resunet3cs"
SHORT = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "callbacks.prediction_figure=null",
]


@pytest.fixture(scope="module")
def wandb_offline(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
        patch.setenv("WANDB_SILENT", "true")
        yield


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, data_dir, wandb_offline) -> tuple[Path, Path]:
    """A real training run with the W&B logger: its export is the deployed artifact."""
    run_dir = tmp_path_factory.mktemp("real_run")
    artifacts = run_dir.parent / f"{run_dir.name}_artifacts"
    paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={artifacts}"]
    cfg = compose_train_config([*TINY, *paths, *SHORT, "logger=wandb"], output_dir=run_dir)
    with open_dict(cfg):  # as in `python train.py`: Hydra's own node is not in the job config
        del cfg["hydra"]
    train(cfg)
    return run_dir, artifacts


def test_a_real_run_deploys_its_export_and_logs_it_as_a_wandb_model_artifact(deployed):
    run_dir, artifacts = deployed
    exported = run_dir / "export" / f"{NAME}.ts"
    index = ArtifactIndex(artifacts)
    (version,) = index.versions(NAME)
    assert version.deployed and version.record["source_run"] == str(run_dir.resolve())
    assert (
        index.stable_path(NAME).read_bytes() == exported.read_bytes() == version.path.read_bytes()
    )
    assert index.promotions(NAME)[0]["reason"] == "training run"
    assert read_metadata(exported)["check_run"] == []

    (model,) = read_offline_wandb_run(run_dir)["artifacts"]
    assert (model["name"], model["type"], model["aliases"]) == (NAME, "model", ["best", "latest"])
    assert model["files"] == [str(exported.resolve())]  # referenced in place, nothing uploaded
    meta = model["metadata"]
    assert meta["sha256"] == file_sha256(exported) and meta["deployed_as"] == f"{NAME}@1"
    assert meta["test_metrics"]["test/lv_dice"] == version.record["test_metrics"]["test/lv_dice"]
    assert meta["exporting_cpu"]["model"] and meta["source_run"] == str(run_dir.resolve())


@pytest.mark.parametrize(
    "check, reason",
    [
        ("trainer.fast_dev_run=true", "trainer.fast_dev_run"),
        ("debug=fdr", "debug=fdr"),
        ("trainer.limit_train_batches=0.5", "trainer.limit_train_batches=0.5"),
    ],
)
def test_a_check_run_after_a_real_export_leaves_the_deployed_artifact_byte_identical(
    deployed, data_dir, tmp_path, caplog, check, reason
):
    _, artifacts = deployed
    stable = artifacts / f"{NAME}.ts"
    before, index_before = stable.read_bytes(), (artifacts / "index.json").read_bytes()
    paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={artifacts}"]
    overrides = [*TINY, *paths, "trainer.max_epochs=1", "callbacks.prediction_figure=null", check]
    with caplog.at_level(logging.WARNING, logger="callbacks.export"):
        train(compose_train_config(overrides, output_dir=tmp_path / "check"))

    assert stable.read_bytes() == before and (artifacts / "index.json").read_bytes() == index_before
    exported = tmp_path / "check" / "export" / f"{NAME}.ts"  # exported into its run dir only
    assert reason in read_metadata(exported)["check_run"]
    (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Check run")]
    assert reason in said and f"exported only into {exported}" in said and str(stable) in said


def test_a_multirun_deploys_the_job_its_rule_picks_and_make_promote_can_change_it(
    tmp_path, data_dir, monkeypatch, wandb_offline
):
    sweep = tmp_path / "sweep"
    rule = ["sweep_promotion=best", "optimized_metric=val/loss", "sweep_promotion_mode=min"]
    exporting = [o for o in ONE_BATCH if o != "export=none"]
    overrides = [*TINY, *rule, "logger=wandb", "seed=3,1,2"]
    assert run_multirun(overrides, sweep, data_dir, monkeypatch, exporting) == 0

    jobs = [sweep / str(n) for n in range(3)]
    losses = [read_run_record(job / "metrics.json").metrics["val/loss"] for job in jobs]
    assert len(set(losses)) == 3  # the rule has something to choose from
    picked = jobs[losses.index(min(losses))]
    assert picked != jobs[-1]  # seed 3 has the lowest loss: not the job that finished last
    exports = [job / "export" / f"{NAME}.ts" for job in jobs]
    index = ArtifactIndex(sweep / "artifacts")
    stable = index.stable_path(NAME)
    assert stable.read_bytes() == (picked / "export" / f"{NAME}.ts").read_bytes()
    (version,) = index.versions(NAME)  # no job deployed itself: one version, one promotion
    (promotion,) = index.promotions(NAME)
    assert version.record["source_run"] == str(picked.resolve())
    assert promotion["reason"].startswith("sweep rule: best val/loss (min)")
    for job in jobs:  # each job logged its export as `latest`; the picked one got `best` after
        runs = read_offline_wandb_runs(job)
        assert runs[0]["artifacts"][0]["aliases"] == ["latest"]
        if job == picked:
            assert runs[1]["job_type"] == "promote"
            assert "best" in runs[1]["artifacts"][0]["aliases"]  # W&B adds `latest` itself
            assert runs[1]["artifacts"][0]["metadata"]["deployed_as"] == f"{NAME}@1"
        else:
            assert len(runs) == 1

    other = next(job for job in jobs if job != picked)  # `make promote RUN=<job dir>`
    artifacts = ["--artifacts-dir", str(index.directory)]
    assert promote_main([str(other), *artifacts]) == 0
    assert stable.read_bytes() == exports[jobs.index(other)].read_bytes()
    assert "best" in read_offline_wandb_runs(other)[-1]["artifacts"][0]["aliases"]
    assert promote_main([f"{NAME}@1", *artifacts]) == 0  # roll back to the sweep's pick
    assert stable.read_bytes() == (picked / "export" / f"{NAME}.ts").read_bytes()
    assert [v.deployed for v in index.versions(NAME)] == [True, False]
