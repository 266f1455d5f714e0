"""The artifact index: deploy on purpose, keep every replaced model, roll back, resolve names.

Real exported TorchScript files of a tiny ResUNet (different weights per run directory), a real
``index.json``, the real command line, and a real ``python`` process killed mid-promotion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from deployment.artifact_index import (
    ARTIFACTS_DIR_ENV,
    ArtifactIndex,
    ArtifactIndexError,
    file_sha256,
    resolve_artifact,
)
from deployment.exporter import export_artifact
from exports import ArtifactError, load_artifact
from exports.__main__ import main as exports_main
from lightning_modules.networks.resunet import ResUNet
from quantification.aif_preprocessing import AIFPreprocessing
from tests.conftest import ROOT

NAME = "aif_resunet3cs"


def export_run(run_dir: Path, seed: int, dice: float, check_run: list[str] = ()) -> Path:
    """A run directory with its export: ``<run_dir>/export/aif_resunet3cs.ts`` (test metrics)."""
    torch.manual_seed(seed)
    net = ResUNet(input_planes=4, planes=[4, 4], modules_per_level=[1, 1])
    metadata = {
        "model": "resunet3cs",
        "preprocessing": asdict(AIFPreprocessing()),
        "config": {"optimized_metric": "val/lv_dice"},
        "test_metrics": {"test/lv_dice": dice, "test/lv_dice_sd": 0.01, "test/n_cases": 4.0},
        "source_checkpoint": str(run_dir / "checkpoints" / f"epoch000-{seed}.ckpt"),
        "check_run": list(check_run),
    }
    path = run_dir / "export" / f"{NAME}.ts"
    export_artifact(net, 3, torch.rand(2, 64, 64, 48), path, metadata)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three run directories whose exports differ (test LV Dice 0.81, 0.92, 0.87)."""
    root = tmp_path_factory.mktemp("runs")
    return [export_run(root / f"run{i}", i, dice) for i, dice in enumerate((0.81, 0.92, 0.87))]


def test_each_promotion_keeps_the_replaced_version_and_a_roll_back_restores_it(runs, tmp_path):
    index = ArtifactIndex(tmp_path / "artifacts")
    stable = index.stable_path(NAME)
    first = index.promote(runs[0], reason="training run")
    second = index.promote_target(str(runs[1].parent.parent))  # a run directory
    assert (first.label, second.label) == (f"{NAME}@1", f"{NAME}@2")
    assert stable.read_bytes() == runs[1].read_bytes()
    assert first.path.read_bytes() == runs[0].read_bytes()  # the replaced model is kept

    rolled_back = index.promote_target(f"{NAME}@1")
    assert rolled_back.version == 1 and stable.read_bytes() == runs[0].read_bytes()
    again = index.promote(runs[1])  # the same file again: no new version, a roll forward
    assert again.version == 2 and stable.read_bytes() == runs[1].read_bytes()
    assert index.promote(first.path).label == f"{NAME}@1"  # a stored file keeps its name

    versions = index.versions(NAME)
    assert [(v.version, v.deployed) for v in versions] == [(1, True), (2, False)]
    assert [p["version"] for p in index.promotions(NAME)] == [1, 2, 1, 2, 1]
    assert index.promotions(NAME)[0]["reason"] == "training run"
    record = versions[1].record
    assert record["sha256"] == file_sha256(runs[1])
    assert record["task"] == "aif_lv_detection" and record["model"] == "resunet3cs"
    assert record["test_metrics"]["test/lv_dice"] == 0.92
    assert record["source_run"] == str(runs[1].parent.parent.resolve())
    assert record["exporting_cpu"]["model"] and record["created_utc"]
    on_disk = json.loads(index.path.read_text())
    assert on_disk["artifacts"][NAME]["deployed"] == 1
    assert not list(index.directory.rglob(".*.tmp"))


def test_a_stable_file_the_index_does_not_know_is_kept_before_it_is_replaced(
    runs, tmp_path, capsys
):
    index = ArtifactIndex(tmp_path / "artifacts")
    index.directory.mkdir()
    index.stable_path(NAME).write_bytes(runs[2].read_bytes())  # from before the index
    assert exports_main(["list", "--artifacts-dir", str(index.directory)]) == 0
    assert f"not in {index.path} yet" in capsys.readouterr().out
    index.promote(runs[0])
    (kept, new) = index.versions(NAME)
    assert kept.path.read_bytes() == runs[2].read_bytes() and not kept.deployed
    assert kept.record["origin"] == "found at the stable path, not in the index"
    assert new.deployed and index.stable_path(NAME).read_bytes() == runs[0].read_bytes()


def test_the_onnx_twin_travels_with_its_version(runs, tmp_path):
    with_onnx = tmp_path / "onnx_run" / "export" / f"{NAME}.ts"
    with_onnx.parent.mkdir(parents=True)
    with_onnx.write_bytes(runs[0].read_bytes())
    with_onnx.with_suffix(".onnx").write_bytes(b"the ONNX model of run 0")
    index = ArtifactIndex(tmp_path / "artifacts")
    stable_onnx = index.stable_path(NAME).with_suffix(".onnx")
    index.promote(with_onnx)
    assert stable_onnx.read_bytes() == b"the ONNX model of run 0"
    index.promote(runs[1])  # no ONNX twin: the stale one leaves the stable path, stays stored
    assert not stable_onnx.exists()
    assert (index.directory / "versions" / f"{NAME}.v1.onnx").is_file()
    index.promote_version(NAME, 1)
    assert stable_onnx.read_bytes() == b"the ONNX model of run 0"


def test_an_export_of_a_check_run_is_not_deployed_unless_insisted(tmp_path):
    export = export_run(tmp_path / "fdr", 5, 0.02, check_run=["trainer.fast_dev_run"])
    index = ArtifactIndex(tmp_path / "artifacts")
    with pytest.raises(ArtifactIndexError, match="check run .trainer.fast_dev_run"):
        index.promote(export)
    assert not index.stable_path(NAME).exists() and not index.path.exists()
    assert index.promote(export, allow_check_run=True).record["check_run"] == [
        "trainer.fast_dev_run"
    ]


def test_a_damaged_export_or_index_is_refused_with_the_file_named(runs, tmp_path):
    damaged = tmp_path / f"{NAME}.ts"
    damaged.write_bytes(runs[0].read_bytes()[:-500])
    index = ArtifactIndex(tmp_path / "artifacts")
    with pytest.raises(ArtifactError, match=str(damaged)):
        index.promote(damaged)
    index.directory.mkdir()
    index.path.write_text(
        '{"format": "inline-cmr/artifact-index/1", "artifacts": '
        '{"m": {"versions": [{"version": 1}], "promotions": []}}}'
    )
    with pytest.raises(ArtifactIndexError, match=r"index.json: artifact 'm': expected versions"):
        index.promote(runs[0])
    index.path.write_text("{")
    with pytest.raises(ArtifactIndexError, match="index.json: not a readable index"):
        load_artifact("m", artifacts_dir=index.directory)


def test_load_artifact_resolves_a_name_through_the_index_and_still_takes_paths(
    runs, tmp_path, monkeypatch
):
    artifacts = tmp_path / "artifacts"
    index = ArtifactIndex(artifacts)
    index.promote(runs[0])
    index.promote(runs[1])
    deployed = load_artifact(NAME, artifacts_dir=artifacts)
    assert deployed.path == artifacts / "versions" / f"{NAME}.v2.ts"
    assert deployed.metadata["test_metrics"]["test/lv_dice"] == 0.92
    assert load_artifact(f"{NAME}@1", artifacts_dir=artifacts).path.name == f"{NAME}.v1.ts"
    assert load_artifact(runs[2]).path == runs[2]  # a path still works
    monkeypatch.setenv(ARTIFACTS_DIR_ENV, str(artifacts))  # how a scanner names its folder
    assert resolve_artifact(NAME) == deployed.path
    with pytest.raises(ArtifactError, match="no artifact named 'aif_resunet2cs'"):
        load_artifact("aif_resunet2cs")
    with pytest.raises(ArtifactError, match=f"{NAME!r} has no version 7"):
        load_artifact(f"{NAME}@7")
    with pytest.raises(ArtifactError, match="no such artifact file"):
        load_artifact(tmp_path / "missing.ts")
    legacy = tmp_path / "legacy"  # a folder from before the index: the stable file by name
    legacy.mkdir()
    (legacy / "old_model.ts").write_bytes(runs[2].read_bytes())
    assert load_artifact("old_model", artifacts_dir=legacy).path == legacy / "old_model.ts"


def test_cli_promote_list_and_roll_back(runs, tmp_path, capsys):
    artifacts = ["--artifacts-dir", str(tmp_path / "artifacts")]
    for run in runs[:2]:
        assert exports_main(["promote", str(run.parent.parent), *artifacts]) == 0
    assert f"Deployed {NAME}@2" in capsys.readouterr().out
    assert exports_main(["promote", f"{NAME}@1", *artifacts]) == 0  # roll back
    assert f"Deployed {NAME}@1" in capsys.readouterr().out
    assert exports_main(["list", *artifacts]) == 0
    out = capsys.readouterr().out
    assert f"{NAME}: deployed {NAME}@1" in out
    table, promotions = out.split("promotions:")
    rows = {line.split(f"{NAME}@")[1].split()[0]: line for line in table.splitlines()[2:]}
    assert rows["1"].startswith("*") and not rows["2"].startswith("*")
    assert "test/lv_dice 0.810 ± 0.010" in rows["1"] and "test/lv_dice 0.920 ± 0.010" in rows["2"]
    assert file_sha256(runs[1])[:12] in rows["2"] and "fp32" in rows["2"]
    assert "run1" in rows["2"] and "AVX" in rows["2"]  # the source run, the exporting CPU class
    events = [line.split()[1] for line in promotions.strip().splitlines()]
    assert events == [f"{NAME}@1", f"{NAME}@2", f"{NAME}@1"]

    assert exports_main(["list", "--runs", str(runs[0].parents[2])]) == 0
    candidates = capsys.readouterr().out
    assert all(str(Path(r.parents[1].name) / "export") in candidates for r in runs)

    assert exports_main(["promote", str(tmp_path / "nowhere"), *artifacts]) == 2
    assert "not a run directory, an exported .ts file or NAME@VERSION" in capsys.readouterr().err


def test_rollback_deploys_the_version_before_the_current_one(runs, tmp_path, capsys):
    from deployment.cli import main as deployment_main

    artifacts = ["--artifacts-dir", str(tmp_path / "artifacts")]
    assert deployment_main(["rollback", NAME, *artifacts]) == 2  # nothing deployed yet
    assert f"no artifact named {NAME!r}" in capsys.readouterr().err
    assert deployment_main(["promote", str(runs[0]), *artifacts]) == 0
    assert deployment_main(["rollback", NAME, *artifacts]) == 2  # the only version ever deployed
    assert "nothing to roll back to" in capsys.readouterr().err
    for run in runs[1:]:
        assert deployment_main(["promote", str(run), *artifacts]) == 0
    assert deployment_main(["rollback", NAME, *artifacts]) == 0
    assert f"Rolled back: {NAME}@2 is deployed" in capsys.readouterr().out
    index = ArtifactIndex(tmp_path / "artifacts")
    assert file_sha256(index.stable_path(NAME)) == file_sha256(runs[1])
    assert index.promotions(NAME)[-1]["reason"] == f"roll back from {NAME}@3"


KILLED_DEPLOYMENT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from deployment.artifact_index import ArtifactIndex

    replace, hang_at = os.replace, Path(sys.argv[3])

    def replace_then_hang(source, target):  # the complete temporary file is there; hang
        if Path(target) == hang_at:
            print("HANGING", flush=True)
            time.sleep(600)
        replace(source, target)

    os.replace = replace_then_hang
    ArtifactIndex(sys.argv[1]).promote(sys.argv[2], reason="training run")  # as ModelExport
    """
)


@pytest.mark.parametrize("hang_at", ["index.json", f"{NAME}.ts"])
def test_the_index_survives_an_export_killed_while_deploying(runs, tmp_path, hang_at):
    """The deployment step of an export (ModelExport: the run's export file -> the index) is
    killed; the export itself never touches artifacts/ (tests/test_resume.py kills it)."""
    artifacts = tmp_path / "artifacts"
    index = ArtifactIndex(artifacts)
    index.promote(runs[0])
    before = index.path.read_bytes()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_DEPLOYMENT,
            str(artifacts),
            str(runs[1]),
            str(artifacts / hang_at),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "HANGING", process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)

    assert index.stable_path(NAME).read_bytes() == runs[0].read_bytes()  # never half-written
    if hang_at == "index.json":  # killed before the new index: nothing changed
        assert index.path.read_bytes() == before and index.version(NAME).version == 1
    else:  # killed after it: the name already resolves to the new model, `list` warns
        deployed = load_artifact(NAME, artifacts_dir=artifacts)
        assert deployed.path.read_bytes() == runs[1].read_bytes()
        assert not index.deployed_matches_stable(NAME)
    index.promote(runs[2])  # the next promotion works and repairs the stable file
    assert index.stable_path(NAME).read_bytes() == runs[2].read_bytes()
    assert index.versions(NAME)[0].path.read_bytes() == runs[0].read_bytes()
    leftovers = [p.name for p in artifacts.rglob("*") if p.name.startswith(".") and p.is_file()]
    assert all(name.endswith(".tmp") or name == ".index.lock" for name in leftovers)
