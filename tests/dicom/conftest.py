"""Fixtures of the DICOM tests: one phantom patient as a scanner export (four series of three
vendors, labels beside them), imported once; a tiny exported AIF ResUNet."""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from pydicom.sr.codedict import codes

from exports.__main__ import main as cli
from tests.dicom.vendor_dicom import (
    MOLLI_RUNS_3_3_5,
    MOLLI_RUNS_5_3_3,
    PhantomStudy,
    acquisition_order,
    sop_uids,
    write_phantom_study,
)

SALT = "test-salt"


def native_segs(study: PhantomStudy, folder: Path) -> None:
    """DICOM SEGs of the native images' myocardium, one per image as a viewer saves them
    (made with highdicom), in the source folder."""
    masks = study.acquisitions["t1_native"].masks
    description = hd.seg.SegmentDescription(
        1, "LV myocardium", codes.SCT.AnatomicalStructure, codes.SCT.LeftVentricleMyocardium,
        hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )  # fmt: skip
    folder.mkdir(parents=True)
    for k, i in enumerate(acquisition_order(MOLLI_RUNS_3_3_5)):
        source = pydicom.dcmread(study.files[5][k], stop_before_pixels=True)
        seg = hd.seg.Segmentation(
            [source], masks[i].astype(bool), "BINARY", [description], hd.UID(), 50, hd.UID(),
            k + 1, "reader", "viewer", "1", "0",
        )  # fmt: skip
        seg.save_as(folder / f"seg_{k}.dcm")


def label_npz(study: PhantomStudy, path: Path) -> Path:
    """Per-image labels keyed by SOP Instance UID: 3 (myocardium) on the T2 and post images."""
    t2 = study.acquisitions["t2"].masks
    post = study.acquisitions["post_contrast"].masks
    labels = {uid: 3 * t2[i] for i, uid in enumerate(sop_uids(study.files[9]))}
    post_uids = sop_uids(study.files[7][:-1])  # the last file is the T1 MAP
    for k, i in enumerate(acquisition_order(MOLLI_RUNS_5_3_3)):
        labels[post_uids[k]] = 3 * post[i]
    np.savez(path, **{k: v.astype(np.uint8) for k, v in labels.items()})
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``python -m exports <argv>`` in-process: (exit status, what it printed)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli([str(a) for a in argv])
    return status, stdout.getvalue()


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """The scanner export: GE perfusion, Siemens MOLLI, Philips MOLLI + T1 MAP, Siemens T2-prep
    (JPEG lossless), one DICOM SEG per native image, a README and a nested folder."""
    root = tmp_path_factory.mktemp("scanner_export")
    written = write_phantom_study(root)
    native_segs(written, root / "labels")
    return written


@pytest.fixture(scope="session")
def imported(study: PhantomStudy, tmp_path_factory: pytest.TempPathFactory):
    """(exit status, printed summary, {kind: contract file}) of importing ``study`` with the
    T2 and post-contrast labels given as an .npz."""
    out = tmp_path_factory.mktemp("imported") / "study.h5"
    npz = label_npz(study, out.parent / "labels.npz")
    status, printed = run_cli(["dicom-import", study.root, "--output", out, "--salt", SALT,
                               "--labels", npz])  # fmt: skip
    paths = {k: out.with_name(f"study_{k}.h5") for k in ("aif", "t1_native", "post_contrast", "t2")}
    return status, printed, paths


@pytest.fixture(scope="session")
def aif_artifact(tmp_path_factory: pytest.TempPathFactory, study: PhantomStudy) -> Path:
    """A tiny 3CS ResUNet (seeded; batch-norm statistics from the phantom scan) exported for
    real, as tests/test_inline_runtime.py does."""
    from deployment.exporter import export_artifact
    from lightning_modules.networks.resunet import ResUNet
    from quantification.aif_preprocessing import AIFPreprocessing, preprocess_aif_series

    torch.manual_seed(0)
    net = ResUNet(input_planes=8, planes=[8, 8], modules_per_level=[1, 1])
    scan = study.aif
    image = preprocess_aif_series(scan.series, scan.times_s, scan.n_pd_frames).image[None]
    with torch.no_grad():
        net.train()(torch.from_numpy(np.repeat(image, 2, axis=0)))
    path = tmp_path_factory.mktemp("model") / "aif_resunet3cs.ts"
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "resunet3cs"}
    export_artifact(net.eval(), 3, torch.from_numpy(image), path, meta)
    return path
