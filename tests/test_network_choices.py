"""Network choices (``model/net=...``): the paper's networks and MONAI's, for both tasks.

Each choice builds from the config for the AIF (time frames in, 3 or 1 logits out) and the
myocardium task (one image in, 2 logits out), survives a TorchScript round trip, exports to a
verified artifact that the scanner-side runtime runs without MONAI, and trains end to end.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import h5py
import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamodules.synthetic.aif_phantom import write_aif_phantoms
from deployment.artifact import load_artifact, quiet_torchscript_deprecation
from deployment.exporter import export_artifact
from lightning_modules.networks.resunet import ResUNet
from quantification.aif_preprocessing import AIFPreprocessing, preprocess_aif_series
from summarize_runs import main as summarize_main
from sweeps.run_summary import write_run_record
from tests.conftest import ROOT, TINY, TINY_MAPPING_DATA, TINY_MYOCARDIUM, compose_train_config
from tests.test_inline_runtime import BLOCKED_IMPORTS
from train import train

NETS = sorted(p.stem for p in (ROOT / "conf" / "model" / "net").glob("*.yaml"))
MONAI_NETS = [n for n in NETS if n.startswith("monai_")]

TINY_NET = {  # a few thousand parameters each: every test below runs in seconds
    "resunet": ["input_planes=8", "planes=[8,8]", "modules_per_level=[1,1]"],
    "unet": ["filters=[4,8,16]"],
    "monai_unet": ["channels=[4,8,16]", "strides=[2,2]", "num_res_units=1"],
    "monai_basic_unet": ["features=[4,4,8,8,16,4]"],
    "monai_segresnet": ["init_filters=8", "blocks_down=[1,1,1]", "blocks_up=[1,1]"],
}
TASKS = {  # task -> (overrides, input [C, H, W] of a test batch, output channels)
    "aif_3cs": (["model=resunet3cs"], (64, 64, 48), 3),
    "aif_2cs": (["model=resunet2cs"], (64, 64, 48), 1),
    "myocardium": (["experiment=t1_native_pretrain"], (1, 64, 64), 2),
}
PARAMETERS_M = {  # default sizes, millions of parameters (docs/results.md, "Network choices")
    "aif_3cs": {"resunet": 6.528, "unet": 0.491, "monai_unet": 1.646, "monai_basic_unet": 1.997,
                "monai_segresnet": 1.585},
    "myocardium": {"resunet": 6.474, "unet": 0.486, "monai_unet": 1.628,
                   "monai_basic_unet": 1.978, "monai_segresnet": 1.576},
}  # fmt: skip


def tiny(net: str) -> list[str]:
    return [f"model/net={net}", *(f"model.net.{o}" for o in TINY_NET[net])]


def build(task: str, net: str, size: str = "tiny") -> torch.nn.Module:
    overrides = [*TASKS[task][0], *(tiny(net) if size == "tiny" else [f"model/net={net}"])]
    return hydra.utils.instantiate(compose_train_config(overrides).model).net.eval()


def test_every_network_choice_is_covered_here():
    assert set(NETS) == set(TINY_NET) >= {"resunet", "unet", "monai_unet", "monai_basic_unet"}
    assert "monai_segresnet" in MONAI_NETS


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("net", NETS)
def test_each_network_builds_for_each_task_with_the_task_inputs_and_outputs(task, net):
    _, shape, outputs = TASKS[task]
    if (task, net) == ("aif_2cs", "unet"):  # the U-Net's softmax head needs >= 2 classes
        with pytest.raises(Exception, match="n_classes must be >= 2"):
            build(task, net)
        return
    with torch.no_grad():
        logits = build(task, net)(torch.randn(2, *shape))
    assert logits.shape == (2, outputs, *shape[1:])


@pytest.mark.parametrize("task", sorted(PARAMETERS_M))
def test_default_sizes_have_the_documented_parameter_counts(task):
    for net, millions in PARAMETERS_M[task].items():
        n = sum(p.numel() for p in build(task, net, size="default").parameters())
        assert n / 1e6 == pytest.approx(millions, abs=5e-4), net


@pytest.mark.parametrize("task", ["aif_3cs", "myocardium"])
@pytest.mark.parametrize("net", NETS)
def test_torchscript_round_trip_matches_eager(task, net):
    model = build(task, net)
    buffer = io.BytesIO()
    with quiet_torchscript_deprecation():
        torch.jit.save(torch.jit.script(model), buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    x = torch.randn(2, *TASKS[task][1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)


def test_each_network_carries_its_own_learning_rate_which_the_one_cycle_peak_follows():
    for net in NETS:
        lr = OmegaConf.load(ROOT / "conf" / "model" / "net" / f"{net}.yaml").optimizer.lr
        cfg = compose_train_config([f"model/net={net}"])
        model = hydra.utils.instantiate(cfg.model)
        optimizer = model.optimizer_factory(params=model.parameters())
        assert optimizer.defaults["lr"] == lr, net
        assert model.scheduler_factory.keywords["max_lr"] == lr, net
    override = compose_train_config(["model/net=monai_basic_unet", "model.optimizer.lr=5e-4"])
    assert override.model.scheduler.max_lr == 5e-4  # the command line wins


def test_the_papers_recipe_and_network_stay_one_config_away():
    paper = compose_train_config(["experiment=aif_paper"])
    assert paper.model.optimizer.lr == 1.0e-3 and paper.model.optimizer.betas == [0.9, 0.999]
    assert paper.model.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (paper.model.scheduler.step_size, paper.model.scheduler.gamma) == (10, 0.5)
    assert (paper.trainer.max_epochs, paper.data.batch_size) == (40, 32)
    for overrides in (["experiment=aif_paper"], ["model=resunet3cs"]):
        net = hydra.utils.instantiate(compose_train_config(overrides).model).net
        assert isinstance(net, ResUNet), overrides
        assert sum(p.numel() for p in net.parameters()) / 1e6 == pytest.approx(6.528, abs=5e-4)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()), overrides
    paper_net = hydra.utils.instantiate(paper.model).net  # He fan_out everywhere, head included
    assert paper_net.head.weight.std().item() == pytest.approx((2 / 3) ** 0.5, rel=0.2)


# --------------------------------------------------------------------- export and runtime


MYO_CLASSES = ["background", "myocardium"]
MYO_PREPROCESSING = {"size": [64, 64], "percentiles": [1.0, 99.0], "clip": True}


@pytest.fixture(scope="module")
def aif_images(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Two phantom scans, preprocessed as the runtime does: float32 [2, 64, 64, 48]."""
    path = write_aif_phantoms(tmp_path_factory.mktemp("aif") / "cases.h5", n_patients=1, seed=5)
    with h5py.File(path) as h5:
        return np.stack(
            [
                preprocess_aif_series(
                    g["series"][()], g["times_s"][()], g.attrs["n_pd_frames"]
                ).image
                for g in h5.values()
            ]
        )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, aif_images) -> dict[str, tuple[Path, Path]]:
    """Every MONAI network exported for both tasks (with the export's reload-parity check):
    name -> (artifact, ``.npz`` of an input batch and the eager model's probabilities)."""
    out = tmp_path_factory.mktemp("artifacts")
    batches = {"aif": torch.from_numpy(aif_images), "myo": torch.rand(3, 1, 64, 64)}
    files = {}
    for net in MONAI_NETS:
        for task, build_task in (("aif", "aif_3cs"), ("myo", "myocardium")):
            torch.manual_seed(0)
            model, x = build(build_task, net), batches[task]
            path = out / f"{task}_{net}.ts"
            if task == "aif":
                meta = {"preprocessing": asdict(AIFPreprocessing()), "model": f"{net}3cs"}
                export_artifact(model, 3, x, path, meta)
            else:
                meta = {"task": "myocardium_segmentation", "model": net, "classes": MYO_CLASSES,
                        "preprocessing": MYO_PREPROCESSING}  # fmt: skip
                export_artifact(model, 2, x, path, meta, freeze=False, output="softmax")
            with torch.no_grad():
                np.savez(path.with_suffix(".npz"), x=x.numpy(), p=model(x).softmax(1).numpy())
            files[f"{task}_{net}"] = (path, path.with_suffix(".npz"))
    return files


def test_each_monai_export_reloads_with_parity_and_its_metadata(artifacts):
    for name, (path, _) in artifacts.items():
        artifact = load_artifact(path)
        assert artifact.metadata["parity_max_abs_diff"] <= 1e-5, name
        task = "aif_lv_detection" if name.startswith("aif") else "myocardium_segmentation"
        assert artifact.metadata["task"] == task


RUN_ALL = """
import json
import numpy as np
from exports import load_artifact
from exports.mapping_pipeline import MyocardiumSegmenter

report = {}
for path, arrays in zip(sys.argv[1::2], sys.argv[2::2]):
    artifact, expected = load_artifact(path), np.load(arrays)
    diff = float(np.abs(artifact.probabilities(expected["x"]) - expected["p"]).max())
    report[path] = {"diff": diff}
    if artifact.metadata["task"] == "myocardium_segmentation":
        images = np.random.default_rng(0).random((2, 80, 72)).astype(np.float32)
        report[path]["mask_shape"] = list(MyocardiumSegmenter(artifact)(images).shape)
assert not {"monai", "pytorch_lightning", "hydra"} & set(sys.modules)
print(json.dumps(report))
"""


def test_the_runtime_runs_every_monai_artifact_without_monai(artifacts):
    blocked = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS + "import monai"], capture_output=True, text=True
    )
    assert "not available on the scanner" in blocked.stderr  # MONAI is blocked there
    argv = [str(f) for pair in artifacts.values() for f in pair]
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS + RUN_ALL, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for name, (path, _) in artifacts.items():
        assert report[str(path)]["diff"] <= 1e-5, name  # plain torch reproduces eager MONAI
        if name.startswith("myo"):
            assert report[str(path)]["mask_shape"] == [2, 80, 72]


# --------------------------------------------------------------------- training end to end


def test_train_py_with_a_monai_network_trains_tests_and_exports_the_aif_model(tmp_path, data_dir):
    paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={tmp_path / 'artifacts'}"]
    not_net = [o for o in TINY if not o.startswith("model.net.")]
    cfg = compose_train_config(
        [*not_net, *paths, *tiny("monai_unet"), "trainer.fast_dev_run=true"], output_dir=tmp_path
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/lv_dice"] <= 1.0
    assert {"test/lv_hd95_px", "test/lv_assd_px", "test/lv_n_empty", "test/rv_hd95_px"} <= set(
        metrics
    )
    # a fast_dev_run is a check run: it exports into its run directory and deploys nothing
    artifact = load_artifact(tmp_path / "export" / "aif_monai_unet3cs.ts")
    assert artifact.metadata["model"] == "monai_unet3cs"
    assert "test/lv_hd95_px" in artifact.metadata["test_metrics"]
    assert not (tmp_path / "artifacts" / "aif_resunet3cs.ts").exists()  # the paper's is untouched


def test_train_py_with_a_monai_network_trains_tests_and_exports_the_myocardium_model(
    tmp_path, data_dir
):
    paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={tmp_path / 'artifacts'}"]
    not_net = [o for o in TINY_MYOCARDIUM if not o.startswith("model.net.")]
    overrides = ["experiment=t2_scratch", *tiny("monai_segresnet"), *TINY_MAPPING_DATA,
                 "trainer.fast_dev_run=true"]  # fmt: skip
    metrics = train(compose_train_config([*not_net, *paths, *overrides], output_dir=tmp_path))
    assert 0.0 <= metrics["test/dsc"] <= 1.0
    assert {"test/myo_hd95_px", "test/myo_assd_px", "test/myo_n_empty"} <= set(metrics)
    assert "test/myo_hd95_mm" not in metrics  # the phantoms carry no pixel size
    artifact = load_artifact(tmp_path / "export" / "myo_monai_segresnet_sc_t2.ts")
    assert not (tmp_path / "artifacts" / "myo_monai_segresnet_sc_t2.ts").exists()
    assert artifact.metadata["task"] == "myocardium_segmentation"


# --------------------------------------------------------------------- the comparison preset


def test_the_comparison_preset_sweeps_every_aif_network(tmp_path):
    cfg = compose_train_config(["experiment=aif_net_compare"], output_dir=tmp_path)
    swept = cfg.hydra.sweeper.params["model/net"].split(",")
    assert sorted(swept) == sorted(["resunet", *MONAI_NETS])
    assert cfg.model.n_classes == 3 and cfg.experiment_name == "aif_net_compare"


def test_summarize_runs_tabulates_the_networks_with_boundary_metrics(tmp_path, capsys):
    for job, (net, dice, hd95) in enumerate([("resunet", 0.95, 1.1), ("monai_unet", 0.93, 1.4)]):
        metrics = {"test/lv_dice": dice, "test/lv_hd95_px": hd95, "test/lv_n_empty": 0.0}
        write_run_record(
            tmp_path / str(job),
            metrics,
            ["experiment=aif_net_compare", f"model/net={net}"],
            seed=42,
            model="resunet3cs",
            optimized_metric="val/lv_dice",
        )
    assert summarize_main([str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| model/net | n | test/lv_dice | test/lv_hd95_px | test/lv_n_empty |" in table
    assert "| monai_unet | 1 | 0.930 | 1.400 | 0.000 |" in table
