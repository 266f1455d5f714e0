"""Issue 18 on real components: augmentation, the independent generator, the runtime's test-time
augmentation, its no-LV reasons and legacy fallback, and the out-of-distribution report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules.aif_augmentation import AIFAugmentation, AIFTrainingTransform
from datamodules.synthetic.aif_phantom import CLASSIC, write_aif_phantoms
from deployment.exporter import export_artifact
from evaluation.independent_aif_phantom import write_independent_phantoms
from evaluation.tasks import evaluate
from exports import AIFInputError, AIFPipeline, load_artifact
from exports.__main__ import main as cli
from formats.aif_contract import read_aif_case, scan_aif_file
from lightning_modules.networks.resunet import ResUNet
from quantification.aif_preprocessing import AIFPreprocessing
from quantification.enhancing_pools import enhancing_pools, no_lv_reason
from tests.test_evaluate import compose_evaluate_config

TINY_NET = {"input_planes": 8, "planes": [8, 8], "modules_per_level": [1, 1]}


@pytest.fixture(scope="module")
def classic(tmp_path_factory) -> Path:
    """Two clean patients of the classic family: the legacy detector finds their LV."""
    path = tmp_path_factory.mktemp("classic") / "classic.h5"
    return write_aif_phantoms(path, 2, seed=5, ranges=CLASSIC)


def _export(path: Path, blind: bool = False) -> Path:
    """A tiny 3CS artifact; ``blind`` makes it answer 'background' everywhere."""
    torch.manual_seed(0)
    net = ResUNet(**TINY_NET).eval()
    if blind:
        with torch.no_grad():
            net.head.bias.copy_(torch.tensor([50.0, -50.0, -50.0]))
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "resunet3cs"}
    export_artifact(net, 3, torch.rand(2, 64, 64, 48), path, meta)
    return path


def test_augmentation_moves_image_and_mask_together_and_is_seeded():
    image = torch.zeros(64, 64, 48)
    image[:, 27:37, 19:29] = torch.linspace(0, 1, 64)[:, None, None]  # a bright square, in time
    mask = torch.zeros(64, 48, dtype=torch.long)
    mask[27:37, 19:29] = 1
    settings = AIFAugmentation(affine_p=1.0, bias_field_p=0.0, gamma_p=0.0,
                               histogram_shift_p=0.0, noise_p=0.0)  # fmt: skip
    torch.manual_seed(3)
    out = AIFTrainingTransform(settings)({"image": image, "mask": mask, "case_id": "c"})
    assert out["case_id"] == "c" and out["image"].max() == 1.0
    moved = out["mask"] == 1
    assert 60 <= moved.sum() <= 150 and not torch.equal(out["mask"], mask)  # rotated, zoomed
    inside = out["image"][-1][moved].mean()
    outside = out["image"][-1][~moved].mean()
    assert inside > 0.8 and outside < 0.05  # the label still covers the bright square
    torch.manual_seed(3)  # same seed, same augmented sample
    again = AIFTrainingTransform(settings)({"image": image, "mask": mask})
    assert torch.equal(again["mask"], out["mask"])


def test_the_independent_generator_writes_valid_contract_cases(tmp_path):
    path = write_independent_phantoms(tmp_path / "independent.h5", 3, seed=1)
    infos = scan_aif_file(path, require_mask=True)
    assert len(infos) == 3 and all(1 <= i.attrs["n_pd_frames"] <= 3 for i in infos)
    with h5py.File(path) as h5:
        case = read_aif_case(h5, infos[0].case_id, path, require_mask=True)
    lv = case.mask == 1
    assert 40 <= lv.sum() <= 190 and (case.mask == 2).any()
    curve = case.series[case.n_pd_frames :, lv].mean(1)
    assert 0.08 < curve[:3].mean() / curve.max() < 0.35  # the high pre-contrast baseline


def test_no_lv_reasons_name_what_the_series_shows():
    t = np.arange(50.0)
    flat = np.random.default_rng(0).normal(100, 1, (50, 32, 32)).astype(np.float32)
    assert no_lv_reason(enhancing_pools(flat, t, 0), 32) == no_lv_reason([], 32)
    one = flat.copy()
    one[:, 8:14, 8:14] += (60 * np.exp(-0.5 * ((t - 20) / 3) ** 2))[:, None, None]
    assert no_lv_reason(enhancing_pools(one, t, 0), 32).startswith("only one enhancing pool (36 px")
    two = one.copy()
    two[:, 20:26, 20:26] += (60 * np.exp(-0.5 * ((t - 40) / 3) ** 2))[:, None, None]
    assert "after the network's 32 s window" in no_lv_reason(enhancing_pools(two, t, 0), 32)


def test_tta_averages_the_flipped_predictions(tmp_path, classic):
    artifact = load_artifact(_export(tmp_path / "aif.ts"))
    with h5py.File(classic) as h5:
        case = read_aif_case(h5, "P0000_stress", classic)
    from quantification.aif_preprocessing import preprocess_aif_series

    image = preprocess_aif_series(case.series, case.times_s, case.n_pd_frames).image
    tta = AIFPipeline(artifact, tta=True).probabilities(image)
    flips = [(), (-2,), (-1,), (-2, -1)]
    by_hand = np.mean(
        [np.flip(artifact.probabilities(np.flip(image, f).copy()), f) for f in flips], axis=0
    )
    np.testing.assert_allclose(tta, by_hand, atol=1e-5)
    assert np.abs(tta - artifact.probabilities(image)).max() > 1e-4  # it changes the answer


def test_a_model_that_finds_no_lv_says_why_and_the_legacy_fallback_is_flagged(tmp_path, classic):
    blind = load_artifact(_export(tmp_path / "blind.ts", blind=True))
    with h5py.File(classic) as h5:
        case = read_aif_case(h5, "P0001_stress", classic)
    with pytest.raises(
        AIFInputError, match=r"no LV blood pool: \d enhancing pools .* none of them"
    ):
        AIFPipeline(blind).run(case.series, case.times_s, case.n_pd_frames)
    result = AIFPipeline(blind, fallback="legacy").run(case.series, case.times_s, case.n_pd_frames)
    assert result.mask_source == "legacy" and "enhancing pools" in result.note
    dice = (
        2
        * ((result.mask == 1) & (case.mask == 1)).sum()
        / ((result.mask == 1).sum() + (case.mask == 1).sum())
    )
    assert dice > 0.7  # the legacy detector's LV


def test_cli_fallback_writes_the_flag(tmp_path, classic, capsys):
    model = _export(tmp_path / "blind.ts", blind=True)
    out = tmp_path / "results.h5"
    args = ["aif", "--model", str(model), "--input", str(classic), "--output", str(out)]
    assert cli([*args, "--fallback", "legacy", "--tta"]) == 0
    assert "ok (legacy fallback mask)" in capsys.readouterr().out
    summary = json.loads(out.with_suffix(".json").read_text())
    assert {c["mask_source"] for c in summary["cases"].values()} == {"legacy"}
    with h5py.File(out) as h5:
        assert h5["P0000_rest"].attrs["mask_source"] == "legacy"
    assert cli(args) == 1  # without the fallback every case fails, with its reason
    assert "the model found no LV blood pool" in capsys.readouterr().out


def test_ood_report_has_one_row_per_family_and_user_file(tmp_path, data_dir, classic):
    model = _export(tmp_path / "aif.ts")
    cfg = compose_evaluate_config(
        [
            "task=aif_ood",
            f"artifact={model}",
            f"paths.data_dir={data_dir}",
            "logger=none",
            "ood.include_test_split=false",
            "ood.families=[low_snr,independent]",
            "ood.n_patients=2",
            f"ood.files=[{classic}]",
            "legacy.enabled=false",
        ],
        tmp_path / "eval",
    )
    metrics = evaluate(cfg)
    assert list(metrics["families"]) == ["low_snr", "independent", "classic.h5"]
    row = metrics["families"]["independent"]["resunet3cs"]
    assert row["n_cases"] == 2 and 0 <= row["detection_rate"] <= 1
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| low_snr | 2 |" in report and "| classic.h5 | 4 |" in report
