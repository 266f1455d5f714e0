"""The scanner-side backend picked by measurement: TorchScript, ONNX Runtime fp32 or int8 QDQ."""

from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datamodules.synthetic.aif_phantom import CLASSIC, write_aif_phantoms
from deployment.artifact import ArtifactError, load_artifact
from deployment.exporter import export_artifact
from deployment.onnx_backend import (
    PARITY_ATOL,
    OnnxModel,
    onnx_paths,
    quantize_onnx_int8,
    select_backend,
)
from exports.mrd_client import run_session
from exports.mrd_server import load_models
from formats.mrd.meta import parse_meta
from quantification.aif_preprocessing import AIFPreprocessing, preprocess_aif_series
from tests.mrd_cases import BolusTiming, aif_images, read_aif_phantom, serving

pytest.importorskip("onnxruntime")
SHAPE = (64, 64, 48)


def small_net(seed: int, confident: bool = True) -> nn.Module:
    """Random weights; ``confident``: background by a clear margin almost everywhere, as a
    trained AIF model decides (else three classes about equally likely: many near-ties)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(64, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    if confident:
        with torch.no_grad():
            net[2].bias.copy_(torch.tensor([4.0, 0.0, 0.0]))
    return net


def export_with_onnx(net: nn.Module, path: Path) -> Path:
    """``path`` (.ts) and ``path``.onnx (fp32) of a 3-class AIF model, and its int8 QDQ file."""
    series = np.random.default_rng(1).random((8, *SHAPE), dtype=np.float32)
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "small"}
    export_artifact(net, 3, torch.from_numpy(series[:2]), path, meta, onnx=True)
    quantize_onnx_int8(onnx_paths(path)["onnx-fp32"], series, onnx_paths(path)["onnx-int8"])
    return path


@pytest.fixture(scope="module")
def artifact_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_with_onnx(small_net(0), tmp_path_factory.mktemp("m") / "aif.ts")


def test_the_fastest_backend_that_passes_parity_runs_and_is_named(artifact_path):
    artifact = load_artifact(artifact_path)
    model, choice = select_backend(artifact, "auto", threads=2, runs=3)
    assert set(choice.median_ms) == {"torchscript", "onnx-fp32", "onnx-int8"}, choice.refused
    assert choice.name == min(choice.median_ms, key=choice.median_ms.__getitem__)
    assert choice.parity["onnx-fp32"] <= PARITY_ATOL["onnx-fp32"]
    assert f"backend {choice.name}" in choice.describe()
    series = np.random.default_rng(5).random(SHAPE, dtype=np.float32)
    expected = artifact.probabilities(series)
    decided = model.probabilities(series).argmax(axis=0)
    assert np.mean(decided == expected.argmax(axis=0)) > 0.99

    fp32, asked = select_backend(artifact, "onnx-fp32")
    assert isinstance(fp32, OnnxModel) and asked.name == "onnx-fp32"
    assert fp32.metadata["weights_sha256"] == artifact.metadata["weights_sha256"]
    assert select_backend(artifact, "torchscript")[0] is artifact


def test_an_int8_model_that_decides_otherwise_is_not_used(tmp_path):
    path = export_with_onnx(small_net(0, confident=False), tmp_path / "undecided.ts")
    model, choice = select_backend(load_artifact(path), runs=1)
    assert "onnx-int8" not in choice.median_ms and choice.name in ("torchscript", "onnx-fp32")
    assert "of the pixels as TorchScript does" in choice.refused["onnx-int8"]


def test_an_onnx_file_of_other_weights_is_not_used(artifact_path, tmp_path):
    other = export_with_onnx(small_net(1), tmp_path / "other.ts")
    mixed = tmp_path / "mixed.ts"
    shutil.copy(artifact_path, mixed)
    shutil.copy(onnx_paths(other)["onnx-fp32"], onnx_paths(mixed)["onnx-fp32"])
    artifact = load_artifact(mixed)
    model, choice = select_backend(artifact)
    assert model is artifact and choice.name == "torchscript"
    assert "weights_sha256" in choice.refused["onnx-fp32"]
    assert "no such ONNX file" in choice.refused["onnx-int8"]
    with pytest.raises(ArtifactError, match="backend onnx-fp32 not usable"):
        select_backend(artifact, "onnx-fp32")


def test_without_onnxruntime_the_torchscript_model_runs_with_the_reason(artifact_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    artifact = load_artifact(artifact_path)
    model, choice = select_backend(artifact)
    assert model is artifact and choice.name == "torchscript"
    assert "onnxruntime is not installed" in choice.refused["onnx-fp32"]


def test_a_normal_load_prints_no_deprecation_warning(artifact_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artifact = load_artifact(artifact_path)
        model, _ = select_backend(artifact, runs=1)
        model.probabilities(np.zeros(SHAPE, np.float32))
    assert [str(w.message) for w in caught if "deprecat" in str(w.message).lower()] == []


def test_the_server_reports_the_backend_of_the_aif_model(tmp_path):
    phantoms = write_aif_phantoms(tmp_path / "cases.h5", n_patients=1, seed=5, ranges=CLASSIC)
    series, times_s, n_pd, _ = read_aif_phantom(phantoms, "P0000_rest")
    batch = torch.from_numpy(preprocess_aif_series(series, times_s, n_pd).image[None])
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "bolustiming"}
    path = tmp_path / "aif.ts"
    export_artifact(BolusTiming().eval(), 3, batch, path, meta, onnx=True)
    frames = aif_images(series, times_s)
    results = {}
    for backend in ("torchscript", "onnx-fp32"):
        with serving(load_models(path, None, backend)) as server:
            results[backend] = run_session(
                server.address, "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=20.0
            )
    for backend, result in results.items():
        assert result.closed and not result.errors, result.errors
        assert result.documents()[0]["backend"] == backend
        assert parse_meta(result.images[0].attributes)["InlineCMR_backend"] == [backend]
    labels = [r.images[0].data for r in results.values()]
    np.testing.assert_array_equal(labels[0], labels[1])
