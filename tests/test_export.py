"""Export: a real training run leaves a verified TorchScript artifact; ONNX; make export."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.export import main as export_main
from deployment import cpu_info
from deployment.artifact import METADATA_KEYS, METADATA_NAME
from deployment.exporter import ExportParityError, export_artifact
from exports import ArtifactError, load_artifact, read_metadata
from lightning_modules.networks.resunet import ResUNet
from quantification.aif_preprocessing import AIFPreprocessing
from tests.conftest import TINY, compose_train_config
from train import train

TINY_NET = {"input_planes": 8, "planes": [8, 8], "modules_per_level": [1, 1]}


def save_hydra_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes at the start of a run: <run dir>/.hydra/config.yaml and hydra.yaml."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    job_keys = [key for key in cfg if key != "hydra"]
    OmegaConf.save(OmegaConf.masked_copy(cfg, job_keys), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.masked_copy(cfg, ["hydra"]), run_dir / ".hydra" / "hydra.yaml")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    """One short real training run (2 steps, test on the best checkpoint, export) in a tmp dir."""
    run_dir = tmp_path_factory.mktemp("run")
    artifacts = run_dir.parent / f"{run_dir.name}_artifacts"
    overrides = [
        *TINY,
        f"paths.data_dir={data_dir}",
        f"paths.artifacts_dir={artifacts}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
    ]
    cfg = compose_train_config(overrides, output_dir=run_dir)
    save_hydra_run_files(cfg, run_dir)
    train(cfg)
    return run_dir, artifacts


def eager_model(run_dir: Path, checkpoint: str):
    """The SegmentationModule of a run with a checkpoint's weights, eval mode."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    model = hydra.utils.instantiate(cfg.model)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    return model.eval()


def test_training_leaves_the_artifact_at_the_stable_path_and_in_the_run_dir(trained_run):
    run_dir, artifacts = trained_run
    artifact = artifacts / "aif_resunet3cs.ts"
    assert artifact.read_bytes() == (run_dir / "export" / "aif_resunet3cs.ts").read_bytes()
    assert not list(artifacts.glob(".*.tmp"))  # the atomic write left no temporary file


def test_metadata_is_complete(trained_run):
    run_dir, artifacts = trained_run
    meta = read_metadata(artifacts / "aif_resunet3cs.ts")
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["task"] == "aif_lv_detection" and meta["model"] == "resunet3cs"
    assert meta["classes"] == ["background", "lv", "rv"] and meta["output"] == "softmax"
    assert meta["input_shape"] == [None, 64, 64, 48]
    trained_with = AIFPreprocessing(**meta["config"]["data"]["preprocessing"])
    assert meta["preprocessing"] == asdict(trained_with)  # what the runtime will apply
    rule = meta["threshold_rule"]
    assert (rule["start"], rule["step"], rule["stop"], rule["connectivity"]) == (0.5, 0.01, 0.99, 8)
    assert meta["torch_version"] == torch.__version__
    assert meta["config"]["model"]["net"]["input_planes"] == 8  # the resolved training config
    assert meta["config"]["paths"]["output_dir"] == str(run_dir)
    assert 0 <= meta["test_metrics"]["test/lv_dice"] <= 1  # exported after testing
    assert meta["source_checkpoint"].startswith(str(run_dir / "checkpoints" / "epoch"))
    assert len(meta["weights_sha256"]) == 64 and meta["parity_max_abs_diff"] <= 1e-5


def test_round_trip_matches_the_eager_model_on_a_real_batch(trained_run, data_dir):
    run_dir, artifacts = trained_run
    artifact = load_artifact(artifacts / "aif_resunet3cs.ts")
    model = eager_model(run_dir, artifact.metadata["source_checkpoint"])
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    datamodule = hydra.utils.instantiate(cfg.data, split_out=None, data_dir=str(data_dir))
    datamodule.setup("test")
    image = next(iter(datamodule.test_dataloader()))["image"]
    with torch.no_grad():
        eager = model.probabilities(model(image)).numpy()
    exported = artifact.probabilities(image.numpy())
    assert exported.shape == eager.shape == (len(image), 3, 64, 48)
    assert np.abs(exported - eager).max() <= 1e-5


def test_make_export_rebuilds_the_model_from_the_run_config(trained_run, tmp_path):
    run_dir, _ = trained_run
    checkpoint = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    output = tmp_path / "exported.ts"
    assert export_main([str(checkpoint), "--output", str(output)]) == 0
    meta = load_artifact(output).metadata
    assert meta["source_checkpoint"] == str(checkpoint)
    assert meta["test_metrics"]["test/n_cases"] > 0  # the checkpoint was tested on its split


@pytest.mark.filterwarnings("error::DeprecationWarning")  # the jit deprecations are filtered
def test_2cs_exports_a_sigmoid_head(tmp_path):
    net = ResUNet(n_outputs=1, **TINY_NET)
    batch = torch.rand(2, 64, 64, 48)
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "resunet2cs"}
    export_artifact(net, 2, batch, tmp_path / "aif_resunet2cs.ts", meta)
    artifact = load_artifact(tmp_path / "aif_resunet2cs.ts")
    assert artifact.metadata["classes"] == ["background", "lv"]
    assert artifact.metadata["output"] == "sigmoid" and artifact.n_classes == 2
    with torch.no_grad():
        expected = torch.sigmoid(net.eval()(batch)).numpy()
    assert np.abs(artifact.probabilities(batch.numpy()) - expected).max() <= 1e-5


class ScriptOnlyOffset(torch.nn.Module):
    """A network that TorchScript runs differently from eager mode (a parity failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ResUNet(**TINY_NET)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if torch.jit.is_scripting():
            out = out * 1.5
        return out


def test_a_parity_mismatch_fails_the_export_and_writes_nothing(tmp_path):
    meta = {"preprocessing": asdict(AIFPreprocessing())}
    with pytest.raises(ExportParityError, match="differs from the eager model by"):
        export_artifact(ScriptOnlyOffset(), 3, torch.rand(2, 64, 64, 48), tmp_path / "m.ts", meta)
    assert not list(tmp_path.iterdir())


@pytest.mark.filterwarnings("error::DeprecationWarning")  # the exporter's own ones are filtered
def test_onnx_export_is_checked_with_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    net, batch = ResUNet(**TINY_NET), torch.rand(3, 64, 64, 48)
    with torch.no_grad():  # batch-norm statistics of data, as after training
        net.train()(torch.rand(8, 64, 64, 48))
    net.eval()
    meta = {"preprocessing": asdict(AIFPreprocessing())}
    export_artifact(net, 3, batch, tmp_path / "aif.ts", meta, onnx=True)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "aif.onnx")).metadata_props}
    assert json.loads(props[METADATA_NAME])["classes"] == ["background", "lv", "rv"]
    session = ort.InferenceSession(str(tmp_path / "aif.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": batch[:2].numpy()})[0]  # any batch size
    with torch.no_grad():
        expected = net(batch[:2]).softmax(1).numpy()
    assert np.abs(out - expected).max() <= 1e-5


def test_bf16_export_runs_bfloat16_weights_behind_a_float32_interface(tmp_path, monkeypatch):
    net, batch = ResUNet(**TINY_NET), torch.rand(3, 64, 64, 48)
    with torch.no_grad():  # batch-norm statistics of data, as after training
        net.train()(torch.rand(8, 64, 64, 48))
    net.eval()
    meta = {"preprocessing": asdict(AIFPreprocessing())}
    export_artifact(net, 3, batch, tmp_path / "aif.ts", meta, precision="bf16")
    # the artifact records what it needs and where it was exported ...
    assert read_metadata(tmp_path / "aif.ts")["cpu_requirements"] == ["avx512_bf16"]
    assert read_metadata(tmp_path / "aif.ts")["exporting_cpu"] == cpu_info.host_cpu().as_metadata()
    # ... and a host without native bf16 refuses to run it emulated, naming the feature
    monkeypatch.setattr(cpu_info, "host_cpu", lambda: ZEN3)
    with pytest.raises(ArtifactError, match=r"needs CPU feature\(s\) \['avx512_bf16'\].*AVX2"):
        load_artifact(tmp_path / "aif.ts")
    monkeypatch.setattr(cpu_info, "host_cpu", lambda: ZEN4)
    artifact = load_artifact(tmp_path / "aif.ts")
    assert artifact.metadata["precision"] == "bf16"
    out = artifact.probabilities(batch.numpy())
    assert out.dtype == np.float32 and out.shape == (3, 3, 64, 48)
    with torch.no_grad():
        bf16 = net.to(torch.bfloat16)(batch.to(torch.bfloat16)).float().softmax(1).numpy()
    assert np.abs(out - bf16).max() <= 1e-5  # the TorchScript model is the eager bf16 model
    # ... and close to, not equal to, float32: bfloat16 keeps 8 bits of mantissa
    assert 0 < artifact.metadata["fp32_max_abs_diff"] < 0.5


ZEN3 = cpu_info.probe_cpu(("AMD EPYC 7B13", {"avx2", "fma"}), "AVX2", mkldnn_bf16=False)
ZEN4 = cpu_info.probe_cpu(("AMD EPYC 9B14", {"avx512_bf16", "avx512_vnni"}), "AVX512", True)


def test_fp32_artifacts_need_no_cpu_feature_and_load_anywhere(tmp_path, monkeypatch):
    net = ResUNet(**TINY_NET).eval()
    meta = {"preprocessing": asdict(AIFPreprocessing())}
    export_artifact(net, 3, torch.rand(2, 64, 64, 48), tmp_path / "aif.ts", meta)
    assert read_metadata(tmp_path / "aif.ts")["cpu_requirements"] == []
    monkeypatch.setattr(cpu_info, "host_cpu", lambda: ZEN3)
    assert load_artifact(tmp_path / "aif.ts").metadata["precision"] == "fp32"


@pytest.mark.filterwarnings("error::DeprecationWarning")  # jit and quantisation ones are filtered
def test_int8_export_is_a_quantised_model_behind_a_float32_interface(tmp_path):
    net, batch = ResUNet(**TINY_NET), torch.rand(3, 64, 64, 48)
    with torch.no_grad():  # batch-norm statistics of data, as after training
        net.train()(torch.rand(8, 64, 64, 48))
    net.eval()
    meta = {"preprocessing": asdict(AIFPreprocessing())}
    export_artifact(
        net, 3, batch, tmp_path / "aif.ts", meta, precision="int8",
        calibration=torch.rand(16, 64, 64, 48), int8_float_modules=("input_block", "head"),
    )  # fmt: skip
    artifact = load_artifact(tmp_path / "aif.ts")
    assert artifact.metadata["precision"] == "int8"
    assert artifact.metadata["quantization"] == {
        "backend": "fbgemm", "calibration_cases": 16, "float_modules": ["input_block", "head"],
        "reduce_range": False,
    }  # fmt: skip
    assert torch.backends.quantized.engine == "fbgemm"  # set by load_artifact, as exported
    assert artifact.metadata["parity_max_abs_diff"] <= 1e-5  # vs the eager int8 model
    assert 0 < artifact.metadata["fp32_max_abs_diff"] < 1  # int8 rounds: close, not equal
    out = artifact.probabilities(batch[:2].numpy())  # any batch size, float32 in and out
    assert out.dtype == np.float32 and out.shape == (2, 3, 64, 48)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert "quantized::conv2d" in str(artifact.module.inlined_graph)  # int8 kernels run it


def test_int8_needs_calibration_and_known_module_names(tmp_path):
    net, meta = ResUNet(**TINY_NET).eval(), {"preprocessing": asdict(AIFPreprocessing())}
    batch = torch.rand(2, 64, 64, 48)
    with pytest.raises(ValueError, match="int8 needs calibration"):
        export_artifact(net, 3, batch, tmp_path / "a.ts", meta, precision="int8")
    with pytest.raises(ValueError, match=r"\['decoder'\] are not submodules of ResUNet"):
        export_artifact(
            net, 3, batch, tmp_path / "a.ts", meta, precision="int8",
            calibration=batch, int8_float_modules=("decoder",),
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_make_export_int8_calibrates_on_the_validation_split(trained_run, tmp_path):
    run_dir, _ = trained_run
    checkpoint = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    output = tmp_path / "int8.ts"
    assert export_main([str(checkpoint), "--output", str(output), "--precision", "int8"]) == 0
    meta = load_artifact(output).metadata
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_cases"] > 0
    assert meta["quantization"]["float_modules"] == []  # conf/export/default.yaml
