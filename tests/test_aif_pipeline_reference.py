"""The fast AIF path gives exactly what the straightforward one gave, on many phantom series.

The reference is the pipeline as first written: the threshold rule labelled at every threshold
(``tests.test_lv_mask.repeated_labelling_rule``) and the AIF taken from the coil-corrected signal
of **every** pixel on the grid (``signal_on_grid`` without ``pixels``), then
``quantification.aif_curve.aif_curve``; the fast path labels only where it matters and
resamples only the LV and RV pixels.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules.synthetic.aif_phantom import CLASSIC, TRAINING, write_aif_phantoms
from deployment.artifact import load_artifact
from exports.aif_pipeline import AIFPipeline
from quantification import lv_mask
from quantification.aif_curve import aif_curve, aif_features
from quantification.lv_mask import LABEL_LV, LABEL_RV
from tests.mrd_cases import BolusTiming, export_aif_model
from tests.test_lv_mask import repeated_labelling_rule


class NoisyBolusTiming(torch.nn.Module):
    """:class:`BolusTiming` with a fixed ripple on the LV logit: LV maps with several peaks,
    so that the threshold rule has to raise the threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.bolus = BolusTiming()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.bolus(x)
        ro = torch.arange(x.shape[2], dtype=x.dtype)[:, None]
        e1 = torch.arange(x.shape[3], dtype=x.dtype)[None, :]
        ripple = 2.0 * torch.sin(ro * 0.9) * torch.cos(e1 * 1.3)
        return torch.cat([logits[:, :1], logits[:, 1:2] + ripple, logits[:, 2:]], dim=1)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("aif")
    return [
        write_aif_phantoms(directory / "classic.h5", n_patients=3, seed=5, ranges=CLASSIC),
        write_aif_phantoms(directory / "training.h5", n_patients=3, seed=8, ranges=TRAINING),
    ]


@pytest.mark.parametrize("model", [BolusTiming(), NoisyBolusTiming()], ids=["clean", "ripple"])
def test_masks_curves_and_features_equal_the_reference(model, phantoms, tmp_path, monkeypatch):
    pipeline = AIFPipeline(load_artifact(export_aif_model(model, tmp_path / "m.ts", phantoms[0])))
    cases = [
        (g["series"][()], g["times_s"][()], int(g.attrs["n_pd_frames"]))
        for path in phantoms
        for g in h5py.File(path).values()
    ]
    fast = [pipeline.run(*case) for case in cases]
    monkeypatch.setattr(lv_mask, "lv_mask_from_probability", repeated_labelling_rule)
    raised = 0
    for (series, times_s, n_pd), result in zip(cases, fast, strict=True):
        reference = pipeline.run(series, times_s, n_pd)  # the reference threshold rule
        np.testing.assert_array_equal(result.mask, reference.mask)
        signal, grid_s = pipeline.signal_on_grid(series.astype(np.float32), times_s, n_pd)
        aif = aif_curve(signal, reference.mask == LABEL_LV)
        np.testing.assert_array_equal(result.aif, aif)
        np.testing.assert_array_equal(result.grid_s, grid_s)
        assert asdict(result.features) == asdict(aif_features(aif))
        lv, rv = signal[:, result.mask == LABEL_LV], signal[:, result.mask == LABEL_RV]
        assert result.peak_lv_frame == int(np.argmax(lv.mean(axis=1)))
        assert result.peak_rv_frame == int(np.argmax(rv.mean(axis=1)))
        decided_lv = result.probability.argmax(axis=0) == LABEL_LV
        raised += int((result.mask == LABEL_LV).sum() < decided_lv.sum())
    assert len(cases) == 12
    if isinstance(model, NoisyBolusTiming):
        assert raised > 0  # the ripple made the rule raise its threshold in some cases
