"""evaluate.py end to end: a tiny trained model, its artifact and checkpoint, the legacy one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from datamodules.mapping_datamodule import MappingDataModule
from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from deployment.exporter import export_artifact
from evaluation.mapping_evaluation import (
    MappingCaseEvaluation,
    MappingReferenceError,
    evaluate_mapping_cases,
)
from evaluation.mapping_report import main as mapping_report_main
from evaluation.mapping_report import (
    mapping_metrics,
    mapping_report_markdown,
    paired_values,
    table2_markdown,
)
from evaluation.tasks import evaluate
from exports.mapping_pipeline import SliceResult
from formats.aif_contract import AIFContractError
from lightning_modules.networks.resunet import ResUNet
from lightning_modules.networks.unet import UNet
from quantification.aif_preprocessing import AIFPreprocessing
from tests.conftest import ROOT, TINY, compose_train_config
from train import train

TINY_DATA = [o for o in TINY if o.startswith("data.")]
TINY_MODEL = [o for o in TINY if o.startswith("model.")]


def compose_evaluate_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config of ``python evaluate.py <overrides>``, with run outputs in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A tiny 3CS ResUNet trained for 3 steps and exported; an untrained tiny 2CS artifact."""
    run_dir = tmp_path_factory.mktemp("train_run")
    artifacts = run_dir / "artifacts"
    cfg = compose_train_config(
        [
            *TINY,
            f"paths.data_dir={data_dir}",
            f"paths.artifacts_dir={artifacts}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
        ],
        output_dir=run_dir,
    )
    train(cfg)
    torch.manual_seed(0)
    two_cs = ResUNet(n_outputs=1, input_planes=8, planes=[8, 8], modules_per_level=[1, 1])
    export_artifact(
        two_cs,
        2,
        torch.rand(2, 64, 64, 48),
        artifacts / "aif_resunet2cs.ts",
        {"preprocessing": vars(AIFPreprocessing()), "model": "resunet2cs"},
    )
    checkpoint = next(p for p in (run_dir / "checkpoints").glob("epoch*.ckpt"))
    return {
        "3cs": artifacts / "aif_resunet3cs.ts",
        "2cs": artifacts / "aif_resunet2cs.ts",
        "ckpt": checkpoint,
    }


def evaluate_config(tmp_path: Path, data_dir: Path, overrides: list[str]) -> DictConfig:
    return compose_evaluate_config(
        [*TINY_DATA, f"paths.data_dir={data_dir}", "logger=none", *overrides], tmp_path
    )


def test_report_compares_3cs_2cs_and_legacy_on_the_same_cases(trained, data_dir, tmp_path):
    cfg = evaluate_config(
        tmp_path, data_dir, [f"artifact={trained['3cs']}", f"compare=[{trained['2cs']}]"]
    )
    metrics = evaluate(cfg)

    assert list(metrics["methods"]) == ["resunet3cs", "resunet2cs", "legacy"]
    split = json.loads((tmp_path / "split.json").read_text())
    assert metrics["n_cases"] == len(split["test"]) == len(metrics["cases"])
    for summary in metrics["methods"].values():
        assert 0 <= summary["detection_rate"] <= 1
        assert summary["n_failures"] == len(summary["failures"])
        assert summary["n_failures"] == round((1 - summary["detection_rate"]) * summary["n_cases"])
    assert metrics["methods"]["resunet3cs"]["p_dice_vs_primary"] is None
    assert metrics["methods"]["legacy"]["p_dice_vs_primary"] is not None
    assert metrics["methods"]["legacy"]["detection_rate"] == 1.0  # clean phantom test cases

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["methods"]["legacy"]["lv_dice_mean"] == pytest.approx(
        metrics["methods"]["legacy"]["lv_dice_mean"]
    )
    report = (tmp_path / "report.md").read_text()
    for row in ("| resunet3cs |", "| resunet2cs |", "| legacy |", "| *paper resunet3cs* |"):
        assert row in report
    assert "## AIF curves: legacy vs reference mask" in report
    # boundary distances beside Dice: LV for every method, RV for those that label it
    assert "## Boundary distances (pixels" in report and "| resunet3cs | RV |" in report
    assert set(metrics["methods"]["resunet2cs"]["boundary"]) == {"unit", "lv"}
    lv = metrics["methods"]["legacy"]["boundary"]["lv"]
    assert lv["n_measured"] + lv["n_empty_prediction"] == metrics["n_cases"]
    assert lv["hd95_mean"] >= lv["assd_mean"] >= 0
    for name in ("detection_examples", "aif_curves", "dice_by_method"):
        png = tmp_path / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{name}.png" in report


def test_tta_adds_the_flip_averaged_model_as_a_column(trained, data_dir, tmp_path):
    overrides = [f"artifact={trained['3cs']}", "tta=true", "legacy.enabled=false"]
    metrics = evaluate(evaluate_config(tmp_path, data_dir, overrides))
    assert list(metrics["methods"]) == ["resunet3cs", "resunet3cs+tta"]
    assert metrics["n_cases"] == len(metrics["cases"]) > 0

    from evaluation.predictors import artifact_predictor, with_tta
    from exports.aif_pipeline import AIFPipeline

    plain = artifact_predictor(trained["3cs"])
    image = np.random.default_rng(0).random((1, 64, 64, 48), dtype=np.float32)
    runtime = AIFPipeline(plain.artifact, tta=True).probabilities(image[0])
    np.testing.assert_allclose(with_tta(plain).probabilities(image)[0], runtime, atol=1e-6)


def test_the_checkpoint_scores_exactly_like_its_exported_artifact(trained, data_dir, tmp_path):
    from_artifact = evaluate(
        evaluate_config(
            tmp_path / "a", data_dir, [f"artifact={trained['3cs']}", "legacy.enabled=false"]
        )
    )
    from_checkpoint = evaluate(
        evaluate_config(
            tmp_path / "c",
            data_dir,
            [*TINY_MODEL, f"ckpt_path={trained['ckpt']}", "legacy.enabled=false"],
        )
    )
    assert list(from_checkpoint["methods"]) == ["resunet3cs"]
    a = from_artifact["cases"]
    c = from_checkpoint["cases"]
    assert a.keys() == c.keys()
    for case_id in a:
        assert c[case_id]["resunet3cs"]["lv_dice"] == pytest.approx(
            a[case_id]["resunet3cs"]["lv_dice"], abs=1e-6
        )


def copy_with(tmp_path: Path, source: Path, edit) -> Path:
    """A copy of an AIF file with ``edit(h5)`` applied (to break its reference)."""
    path = tmp_path / "edited.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as h5:
        edit(h5)
    return path


def phantom_file(data_dir: Path) -> Path:
    return next(data_dir.glob("aif_phantoms_*_p8_*.h5"))


def first_case(h5: h5py.File) -> h5py.Group:
    return h5[sorted(h5)[0]]


def drop_mask(h5: h5py.File) -> None:
    del first_case(h5)["mask"]


def wrong_shape_mask(h5: h5py.File) -> None:
    group = first_case(h5)
    shape = group["mask"].shape
    del group["mask"]
    group.create_dataset("mask", data=np.zeros((shape[0], shape[1] - 4), np.uint8))


def no_lv_in_mask(h5: h5py.File) -> None:
    mask = first_case(h5)["mask"]
    mask[...] = np.where(mask[()] == 1, 0, mask[()]).astype(np.uint8)


@pytest.mark.parametrize(
    "edit, message",
    [
        (drop_mask, r"key 'mask': expected a dataset; found nothing \(missing\)"),
        (wrong_shape_mask, r"key 'mask': expected shape \(64, \d+\) \(frame shape\)"),
        (no_lv_in_mask, r"key 'mask': expected (a reference with )?at least one LV pixel"),
    ],
)
def test_a_missing_or_mismatched_reference_is_a_clear_error(
    trained, data_dir, tmp_path, edit, message
):
    path = copy_with(tmp_path, phantom_file(data_dir), edit)
    cfg = evaluate_config(
        tmp_path, data_dir, [f"data.path={path}", "split=all", f"artifact={trained['3cs']}"]
    )
    with pytest.raises(AIFContractError, match=message) as error:
        evaluate(cfg)
    assert str(path) in str(error.value) and "case 'P0000_rest'" in str(error.value)


def test_the_legacy_detector_alone_on_a_whole_file(data_dir, tmp_path):
    cfg = evaluate_config(tmp_path, data_dir, ["artifact=null", "split=all", "max_cases=4"])
    metrics = evaluate(cfg)
    assert list(metrics["methods"]) == ["legacy"] and metrics["n_cases"] == 4
    assert "| legacy | 4 |" in (tmp_path / "report.md").read_text()


def test_an_unknown_task_or_split_is_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match="split='bogus'"):
        evaluate(evaluate_config(tmp_path, data_dir, ["artifact=null", "split=bogus"]))


def test_metrics_and_figures_go_to_an_active_wandb_logger(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_evaluate_config(
        [*TINY_DATA, f"paths.data_dir={data_dir}", "artifact=null", "max_cases=2", "logger=wandb"],
        tmp_path,
    )
    import wandb

    try:
        evaluate(cfg)
        assert wandb.run.summary["eval/legacy/detection_rate"] == 1.0
    finally:
        wandb.finish()
    run = next((tmp_path / "wandb").glob("offline-run-*"))
    images = [p.name for p in (run / "files" / "media").rglob("*.png")]
    assert any(name.startswith("detection_examples") for name in images), images
    assert (run / "files" / "report.md").is_file()


# ----------------------------------------------------------------------------------- mapping


def slice_result(level: str, mean: float, success: bool = True, segments=None) -> SliceResult:
    """A mapping slice result whose map is constant ``mean`` over 20 pixels."""
    values = np.full((8, 8), np.nan, np.float32)
    values[2:6, 2:7] = mean
    segs = np.full(16, np.nan) if segments is None else np.asarray(segments, float)
    return SliceResult(
        case_id="c", slice_id=level, level=level, quantity="t2_ms",
        values=values if success else np.full((8, 8), np.nan, np.float32),
        segments=segs, success=success, reason="" if success else "too few valid images",
        refined_images=1, n_images=9, mean=mean if success else float("nan"),
        n_pixels=20 if success else 0, insertion=None,
    )  # fmt: skip


def synthetic_case(name: str, auto: list[float], ref: list[float], ok=(True, True, True)):
    levels = ("basal", "mid", "apical")
    segs = lambda v: [v] * 6 + [np.nan] * 10  # noqa: E731 (six basal segments)
    return MappingCaseEvaluation(
        case_id=name,
        patient_id=name,
        automated=[
            slice_result(lv, a, s, segs(a)) for lv, a, s in zip(levels, auto, ok, strict=True)
        ],
        reference=[slice_result(lv, r, True, segs(r)) for lv, r in zip(levels, ref, strict=True)],
        dice=np.array([0.9, 0.8]),
    )


def test_mapping_statistics_pair_patients_slices_and_segments():
    cases = [
        synthetic_case("p1", [50, 52, 54], [49, 51, 53]),
        synthetic_case("p2", [60, 62, 64], [59, 60, 62]),
        synthetic_case("p3", [55, 57, 59], [55, 56, 58], ok=(True, True, False)),  # no apical
        synthetic_case("p4", [45, 47, 49], [45, 47, 48]),
    ]
    pairs = paired_values(cases)
    np.testing.assert_allclose(pairs["patient"][0], [52, 62, 47])  # p3: no patient success
    np.testing.assert_allclose(pairs["patient"][1], [51, 60 + 1 / 3, 46 + 2 / 3])
    assert len(pairs["slice"][0]) == 11  # 12 slices, one failed
    assert len(pairs["segment"][0]) == 11 * 6

    metrics = mapping_metrics(cases, "t2", {"exp": 1, "sources": {}})
    assert metrics["patient_success"] == {"n": 3, "rate": 0.75}
    assert metrics["slice_success"]["n"] == 11 and metrics["refinement"]["refined_images"] == 12
    assert metrics["dsc"]["mean"] == pytest.approx(0.85)
    slice_ba = metrics["agreement"]["slice"]["bland_altman"]
    auto, ref = pairs["slice"]
    assert slice_ba["bias"] == pytest.approx(np.mean(auto - ref))
    acc = metrics["diagnostic_accuracy"]  # T2 >= 58 ms: p2 positive in both
    assert (acc["tp"], acc["fn"], acc["tn"], acc["fp"]) == (1, 0, 2, 0)
    assert metrics["failed_slices"] == [
        {"case_id": "p3", "slice_id": "apical", "reason": "too few valid images"}
    ]
    report = mapping_report_markdown(metrics, {})
    assert "| patient | 3 |" in report and "| slice | 11 |" in report

    table = table2_markdown({"exp1": metrics, "exp2": metrics})
    assert table.splitlines()[0] == "| | exp1 | exp2 |"
    assert "| SR patients | 3/4 (75) | 3/4 (75) |" in table
    assert "*1.01*" in table  # the paper's per-patient slope of Exp#1 below ours


def test_table2_from_saved_mapping_reports(tmp_path, capsys):
    case = synthetic_case("p1", [50, 52, 54], [49, 51, 53])
    for exp in (1, 2):
        (tmp_path / f"run{exp}").mkdir()
        metrics = mapping_metrics([case, case, case], "t2", {"exp": exp, "sources": {}})
        (tmp_path / f"run{exp}" / "metrics.json").write_text(json.dumps(metrics))
    assert mapping_report_main([str(tmp_path / "run1"), str(tmp_path / "run2")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "| | exp1 | exp2 |"


@pytest.fixture(scope="module")
def mapping_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two synthetic mapping patients (5 slices each) in the three mapping files."""
    return write_mapping_phantoms(tmp_path_factory.mktemp("mapping"), n_patients=2, seed=7)


def test_perfect_masks_reproduce_the_reference_and_shifted_ones_do_not(mapping_files):
    same = evaluate_mapping_cases(mapping_files, "t2", {"t2": lambda acq: acq.masks}, max_cases=1)
    assert all((c.dice == 1).all() for c in same)
    metrics = mapping_metrics(same, "t2", {})
    assert metrics["agreement"]["slice"]["bland_altman"]["bias"] == 0
    assert metrics["patient_success"]["rate"] == 1.0

    def shifted(acq):  # a model whose masks are one pixel off
        return np.roll(acq.masks.astype(bool), 1, axis=-1)

    worse = evaluate_mapping_cases(mapping_files, "t2", {"t2": shifted}, max_cases=1)
    assert all((c.dice < 0.95).all() for c in worse)
    assert metrics["boundary"]["hd95_mean"] == 0 and metrics["boundary"]["unit"] == "px"
    boundary = mapping_metrics(worse, "t2", {})["boundary"]  # no pixel size in the phantoms
    assert boundary["unit"] == "px" and boundary["hd95_mean"] == pytest.approx(1.0)
    assert "| HD95 of the automated masks" in mapping_report_markdown(
        mapping_metrics(worse, "t2", {}), {}
    )
    auto, ref = paired_values(worse)["slice"]
    assert len(auto) > 0 and not np.allclose(auto, ref)


def test_a_mapping_file_without_reference_masks_is_a_clear_error(mapping_files, tmp_path):
    path = tmp_path / "t2.h5"
    shutil.copy(mapping_files["t2"], path)
    with h5py.File(path, "r+") as h5:
        del h5["case_0001"]["slice_2"]["masks"]
    with pytest.raises(
        MappingReferenceError, match=r"case 'case_0001', slice 'slice_2', key 'masks'"
    ):
        evaluate_mapping_cases({"t2": path}, "t2", {"t2": lambda acq: acq.masks})
    with pytest.raises(MappingReferenceError, match="expected the post_contrast mapping file"):
        evaluate_mapping_cases({"t1_native": path}, "ecv", {})


def test_evaluate_py_maps_with_an_exported_segmentation_model(mapping_files, tmp_path, data_dir):
    torch.manual_seed(0)
    artifact = tmp_path / "myo_unet_tiny.ts"
    export_artifact(
        UNet(filters=(4, 8), dropout=0.0),
        2,
        torch.rand(2, 1, 256, 256),
        artifact,
        {
            "task": "myocardium_segmentation",
            "model": "unet_tiny",
            "classes": ["background", "myocardium"],
            "preprocessing": MappingDataModule(modality="t2").preprocessing,  # training's recipe
            "threshold_rule": {"rule": "P(myocardium) > 0.5"},
        },  # fmt: skip
        output="softmax",
    )
    cfg = compose_evaluate_config(
        [
            "task=mapping",
            "experiment=exp1",
            f"evaluation.artifacts.t2={artifact}",
            f"mapping_data.t2={mapping_files['t2']}",
            "max_cases=1",
            "logger=none",
            f"paths.data_dir={data_dir}",
        ],
        tmp_path,
    )
    metrics = evaluate(cfg)
    assert metrics["exp"] == 1 and metrics["quantity"] == "t2" and metrics["n_slices"] == 5
    assert metrics["dsc"]["n_images"] == 5 * 9
    assert metrics["slice_success"]["n"] + len(metrics["failed_slices"]) == 5
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# T2 mapping: evaluation report (exp1)")
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "mapping"


def test_an_aif_run_with_a_mapping_preset_is_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match="add task=mapping"):
        evaluate(evaluate_config(tmp_path, data_dir, ["experiment=exp1", "artifact=null"]))


def test_ecv_pairs_native_and_post_contrast_slices(mapping_files):
    stored = {m: (lambda acq: acq.masks) for m in ("t1_native", "post_contrast")}
    cases = evaluate_mapping_cases(mapping_files, "ecv", stored, max_cases=1)
    assert len(cases[0].dice) == 5 * (11 + 11)  # every native and post image of 5 slices
    metrics = mapping_metrics(cases, "ecv", {})
    assert metrics["unit"] == "%" and metrics["agreement"]["slice"]["bland_altman"]["bias"] == 0
