"""The inline runtime: verified loading, the AIF pipeline, the batch CLI, its import footprint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules.synthetic.aif_phantom import write_aif_phantoms
from deployment.exporter import export_artifact
from exports import AIFInputError, AIFPipeline, ArtifactError, load_artifact
from exports.__main__ import main as cli
from exports.aif_pipeline import aif_preprocessing_of
from lightning_modules.networks.resunet import ResUNet
from quantification.aif_curve import aif_curve
from quantification.aif_preprocessing import AIFPreprocessing, preprocess_aif_series
from quantification.lv_mask import masks_from_probabilities

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four phantom scans (two patients, stress and rest) in the AIF contract."""
    return write_aif_phantoms(tmp_path_factory.mktemp("cases") / "cases.h5", n_patients=2, seed=3)


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    """A tiny 3CS ResUNet (seeded, batch-norm statistics from the phantoms) exported for real."""
    torch.manual_seed(0)
    net = ResUNet(input_planes=8, planes=[8, 8], modules_per_level=[1, 1])
    with h5py.File(phantoms) as h5:
        images = np.stack(
            [
                preprocess_aif_series(
                    g["series"][()], g["times_s"][()], g.attrs["n_pd_frames"]
                ).image
                for g in h5.values()
            ]
        )
    with torch.no_grad():
        net.train()(torch.from_numpy(images))
    path = tmp_path_factory.mktemp("model") / "aif_resunet3cs.ts"
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "resunet3cs"}
    export_artifact(net.eval(), 3, torch.from_numpy(images), path, meta)
    return path


def read_case(path: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, int]:
    with h5py.File(path) as h5:
        g = h5[case_id]
        return g["series"][()], g["times_s"][()], int(g.attrs["n_pd_frames"])


# --------------------------------------------------------------------------- loading


def test_load_artifact_keeps_a_ready_model_with_its_preprocessing(artifact_path):
    artifact = load_artifact(artifact_path)
    assert artifact.n_classes == 3 and artifact.input_shape == (64, 64, 48)
    assert aif_preprocessing_of(artifact) == AIFPreprocessing()
    out = artifact.probabilities(np.zeros((2, 64, 64, 48), np.float32))
    assert out.shape == (2, 3, 64, 48) and np.allclose(out.sum(axis=1), 1, atol=1e-5)


def test_a_modified_artifact_is_refused(artifact_path, tmp_path):
    changed = tmp_path / "changed.ts"
    with zipfile.ZipFile(artifact_path) as src, zipfile.ZipFile(changed, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("constants/0"):  # one weight tensor, changed in place
                data = data[:-4] + bytes(4)
            dst.writestr(info, data)
    with pytest.raises(ArtifactError, match=r"changed\.ts: weights sha256 .* differs"):
        load_artifact(changed)


def test_a_damaged_artifact_is_refused(artifact_path, tmp_path):
    damaged = tmp_path / "damaged.ts"
    data = bytearray(artifact_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in a weight record
    damaged.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"damaged\.ts: .*(damaged|differs)"):
        load_artifact(damaged)


def test_a_truncated_artifact_is_refused(artifact_path, tmp_path):
    truncated = tmp_path / "truncated.ts"
    truncated.write_bytes(artifact_path.read_bytes()[:-1000])
    with pytest.raises(ArtifactError, match=r"truncated\.ts: .*truncated"):
        load_artifact(truncated)
    with pytest.raises(ArtifactError, match="no such artifact file"):
        load_artifact(tmp_path / "missing.ts")


# --------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("e1", [44, 56])
def test_mask_and_probability_come_back_in_the_input_geometry(artifact_path, phantoms, e1):
    series, times_s, n_pd = read_case(phantoms, "P0001_stress")  # E1 = 48
    if e1 == 44:
        series = series[:, :, 2:46]
    else:
        series = np.pad(series, ((0, 0), (0, 0), (4, 4)), mode="edge")
    artifact = load_artifact(artifact_path)
    result = AIFPipeline(artifact).run(series, times_s, n_pd, case_id="c")
    assert result.mask.shape == (64, e1) and result.mask.dtype == np.uint8
    assert result.probability.shape == (3, 64, e1)

    pre = preprocess_aif_series(series, times_s, n_pd)
    prob = artifact.probabilities(pre.image)
    labels = masks_from_probabilities(prob, 3)
    if e1 < 48:  # zero-padded by 2 on each side: the padding is dropped again
        assert np.array_equal(result.mask, labels[:, 2:46])
        np.testing.assert_allclose(result.probability, prob[:, :, 2:46], atol=1e-6)
    else:  # centre-cropped 4..51: the crop goes back in place, the rest is background
        assert np.array_equal(result.mask[:, 4:52], labels)
        np.testing.assert_allclose(result.probability[:, :, 4:52], prob, atol=1e-6)
        assert not result.mask[:, :4].any() and not result.mask[:, 52:].any()


def test_the_aif_covers_the_whole_acquisition_in_signal_units(artifact_path, phantoms):
    series, times_s, n_pd = read_case(phantoms, "P0000_rest")
    pipeline = AIFPipeline(load_artifact(artifact_path))
    result = pipeline.run(series, times_s, n_pd)
    sr_duration = times_s[-1] - times_s[n_pd]
    assert result.grid_s[-1] == pytest.approx(np.floor(sr_duration / 0.5) * 0.5)
    assert np.allclose(np.diff(result.grid_s), 0.5)
    signal, _ = pipeline.signal_on_grid(series, times_s, n_pd)
    np.testing.assert_array_equal(result.aif, aif_curve(signal, result.mask == 1))
    f = result.features
    assert 0 <= f.foot_s <= f.peak_s <= f.valley_s <= result.grid_s[-1]


BAD_INPUTS = {
    "NaN": (lambda s, t: (np.where(np.arange(s.size).reshape(s.shape) == 7, np.nan, s), t), "NaN"),
    "Inf": (lambda s, t: (np.where(np.arange(s.size).reshape(s.shape) == 7, np.inf, s), t), "Inf"),
    "rank 2": (lambda s, t: (s[0], t), "rank 3"),
    "empty": (lambda s, t: (s[:, :0], t), "empty"),
    "T too short": (lambda s, t: (s[:30], t[:30]), "T=30"),
    "E1 too small": (lambda s, t: (s[:, :, :39], t), "E1=39"),
    "times length": (lambda s, t: (s, t[:-1]), "times_s"),
    "times order": (lambda s, t: (s, t[::-1].copy()), "increasing"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gives_a_clear_error(artifact_path, phantoms, name):
    series, times_s, n_pd = read_case(phantoms, "P0001_stress")
    corrupt, match = BAD_INPUTS[name]
    with pytest.raises(AIFInputError, match=match):
        AIFPipeline(load_artifact(artifact_path)).run(*corrupt(series, times_s), n_pd)


def test_bad_pd_frame_counts_are_refused(artifact_path, phantoms):
    series, times_s, _ = read_case(phantoms, "P0001_stress")
    pipeline = AIFPipeline(load_artifact(artifact_path))
    for n_pd in (-1, len(series) - 1, 2.0):
        with pytest.raises(AIFInputError, match="n_pd_frames"):
            pipeline.run(series, times_s, n_pd)


# --------------------------------------------------------------------------- command line


def test_cli_writes_every_good_case_and_names_the_corrupt_one(artifact_path, phantoms, tmp_path):
    cases = tmp_path / "cases.h5"
    cases.write_bytes(phantoms.read_bytes())
    with h5py.File(cases, "a") as h5:  # one case with a NaN pixel
        series = h5["P0001_rest/series"][()]
        series[10, 20, 20] = np.nan
        h5["P0001_rest/series"][...] = series
    out = tmp_path / "out" / "results.h5"
    argv = ["aif", "--model", str(artifact_path), "--input", str(cases), "--output", str(out)]
    assert cli([*argv, "--figures", str(tmp_path / "figures")]) == 1  # one case failed

    summary = json.loads((tmp_path / "out" / "results.json").read_text())
    assert summary["n_ok"] == 3 and summary["n_failed"] == 1
    failed = summary["cases"]["P0001_rest"]
    assert (
        failed["status"] == "failed" and "'series'" in failed["error"] and "NaN" in failed["error"]
    )
    with h5py.File(out) as h5, h5py.File(cases) as src:
        assert h5["P0001_rest"].attrs["status"] == "failed" and "mask" not in h5["P0001_rest"]
        for case_id in ("P0000_rest", "P0000_stress", "P0001_stress"):
            group, shape = h5[case_id], src[case_id]["series"].shape
            assert group.attrs["status"] == "ok"
            assert group["mask"].dtype == np.uint8 and group["mask"].shape == shape[1:]
            assert set(np.unique(group["mask"][()])) <= {0, 1, 2}
            assert group["probability"].shape == (3, *shape[1:])
            assert group["aif"].dtype == np.float32 and group["aif"].shape == group["grid_s"].shape
            features = summary["cases"][case_id]["features"]
            assert {k: group.attrs[k] for k in features} == pytest.approx(features)
            assert (tmp_path / "figures" / f"{case_id}.png").stat().st_size > 10_000
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_cli_refuses_a_changed_model_file(artifact_path, phantoms, tmp_path, capsys):
    model = tmp_path / "model.ts"
    model.write_bytes(artifact_path.read_bytes()[:-10])
    argv = [
        "aif",
        "--model",
        str(model),
        "--input",
        str(phantoms),
        "--output",
        str(tmp_path / "r.h5"),
    ]
    assert cli(argv) == 2
    assert "model.ts" in capsys.readouterr().err and not (tmp_path / "r.h5").exists()


# --------------------------------------------------------------------------- import footprint

BLOCKED_IMPORTS = """
import importlib.abc, sys

NOT_ON_THE_SCANNER = {"pytorch_lightning", "lightning", "hydra", "omegaconf", "wandb", "monai"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NOT_ON_THE_SCANNER:
            raise ImportError(f"{name} is not available on the scanner")

sys.meta_path.insert(0, Block())
"""

RUN_PIPELINE = """
import numpy as np
from exports import AIFPipeline, load_artifact

case = np.load(sys.argv[2])
pipeline = AIFPipeline(load_artifact(sys.argv[1]))
result = pipeline.run(case["series"], case["times_s"], int(case["n_pd_frames"]))
print(result.mask.shape, round(result.features.peak_s, 1))
assert not {"pytorch_lightning", "hydra", "wandb", "monai", "h5py"} & set(sys.modules)
"""


def test_the_runtime_works_without_lightning_hydra_wandb_or_monai(
    artifact_path, phantoms, tmp_path
):
    series, times_s, n_pd = read_case(phantoms, "P0000_stress")
    case = tmp_path / "case.npz"
    np.savez(case, series=series, times_s=times_s, n_pd_frames=n_pd)
    check = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS + "import pytorch_lightning"],
        capture_output=True,
        text=True,
    )
    assert "not available on the scanner" in check.stderr  # the blocker works
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS + RUN_PIPELINE, str(artifact_path), str(case)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"({series.shape[1]}, {series.shape[2]})")


IMPORT_EVERY_RUNTIME_MODULE = """
import importlib, pkgutil
from exports.__main__ import main

for package in ("formats", "quantification", "deployment", "exports"):
    root = importlib.import_module(package)
    for module in pkgutil.walk_packages(root.__path__, package + "."):
        if module.name != "exports.__main__" and module.name != "deployment.__main__":
            importlib.import_module(module.name)
print(main(["list", "--artifacts-dir", sys.argv[1]]))
"""


def test_every_runtime_module_and_command_imports_without_the_training_stack(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS + IMPORT_EVERY_RUNTIME_MODULE, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("0")


def test_the_runtime_install_leaves_the_training_stack_to_an_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!\[ ]", r)[0].lower() for r in requirements}

    runtime = names(project["dependencies"])
    training = {"pytorch-lightning", "hydra-core", "wandb", "monai", "torchmetrics", "optuna"}
    assert not runtime & training
    assert {"torch", "numpy", "scipy", "h5py", "pydicom", "ismrmrd"} <= runtime
    train_extra = {
        re.split(r"[<>=!\[ ]", d)[0].lower() for d in project["optional-dependencies"]["train"]
    }
    assert {"pytorch-lightning", "hydra-core", "wandb", "monai"} <= train_extra
    assert project["scripts"]["inline-cmr"] == "exports.__main__:main"
