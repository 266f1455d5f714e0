"""Opt-in: python-ismrmrd-server's own ``client.py`` against our server.

Set ``INLINE_CMR_MRD_CLIENT_DIR`` to a copy of https://github.com/kspaceKelvin/python-ismrmrd-server
(kept outside this repository); the client runs from there with this Python (it needs ismrmrd,
h5py and numpy). It reads an MRD image file, sends it (config file name, header, the file's JSON
parameters, images, close) and saves what comes back into an MRD file, which we read back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datamodules.synthetic.aif_phantom import CLASSIC, write_aif_phantoms
from datamodules.synthetic.mapping_phantom import write_mapping_phantoms
from deployment.artifact import load_artifact
from exports.aif_pipeline import AIFPipeline
from exports.mrd_server import load_models
from formats.mrd.file import read_mrd_image_file
from formats.mrd.header import minimal_header_xml
from formats.mrd.images import frame_times_s
from formats.mrd.meta import parse_meta
from tests.mrd_cases import (
    BolusTiming,
    aif_images,
    export_aif_model,
    mapping_images,
    read_aif_phantom,
    serving,
    write_mrd_file,
)

CLIENT_DIR = os.environ.get("INLINE_CMR_MRD_CLIENT_DIR")
pytestmark = pytest.mark.skipif(
    not CLIENT_DIR or not (Path(CLIENT_DIR) / "client.py").is_file(),
    reason="set INLINE_CMR_MRD_CLIENT_DIR to a copy of python-ismrmrd-server",
)


def run_client(port: int, config: str, source: Path, output: Path) -> str:
    """Run the reference client; returns its log (it logs the texts it receives)."""
    command = [
        sys.executable,
        str(Path(CLIENT_DIR) / "client.py"),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        config,
        "-o",
        str(output),
        "-G",
        "results",
        str(source),
    ]
    done = subprocess.run(command, cwd=output.parent, capture_output=True, text=True, timeout=120)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    return log


def test_reference_client_gets_the_aif_labels_and_figures(tmp_path):
    phantoms = write_aif_phantoms(tmp_path / "cases.h5", n_patients=1, seed=5, ranges=CLASSIC)
    series, times_s, n_pd, _ = read_aif_phantom(phantoms, "P0000_rest")
    frames = aif_images(series, times_s, dtype=np.uint16)
    source = write_mrd_file(
        tmp_path / "aif_in.h5",
        "dataset",
        {"image_3": frames},
        minimal_header_xml(),
        parameters={"n_pd_frames": n_pd},
    )
    model = export_aif_model(BolusTiming(), tmp_path / "aif.ts", phantoms)
    with serving(load_models(model, None)) as server:
        log = run_client(server.address[1], "inlinecmr_aif", source, tmp_path / "aif_out.h5")
    assert '"status": "ok"' in log and "Received     1 images" in log
    [group] = read_mrd_image_file(tmp_path / "aif_out.h5")
    [label] = group.series["image_4"]
    stored = np.stack([f.data[0, 0].T.astype(np.float32) for f in frames])
    expected = AIFPipeline(load_artifact(model)).run(stored, frame_times_s(frames)[0], n_pd)
    np.testing.assert_array_equal(label.data[0, 0].T, expected.mask)
    meta = parse_meta(label.attributes)
    assert "ROI_LV" in meta and float(meta["InlineCMR_peak_s"][0]) == expected.features.peak_s


@pytest.mark.parametrize(
    ("config", "modality", "meta_key"),
    [("inlinecmr_t1", "t1_native", "InversionTime"), ("inlinecmr_t2", "t2", "T2PrepDuration")],
)
def test_reference_client_gets_a_map_per_slice(tmp_path, config, modality, meta_key):
    phantoms = write_mapping_phantoms(tmp_path / "phantoms", 1, seed=3, noise=False, motion=False)
    images = mapping_images(phantoms[modality], ["slice_0", "slice_2", "slice_4"], meta_key)
    source = write_mrd_file(
        tmp_path / "maps_in.h5", "dataset", {"image_5": images}, minimal_header_xml()
    )
    with serving(load_models(None, None)) as server:
        log = run_client(server.address[1], config, source, tmp_path / "maps_out.h5")
    assert '"status": "ok"' in log and "Received     3 images" in log
    [group] = read_mrd_image_file(tmp_path / "maps_out.h5")
    maps = group.series["image_6"]
    assert [m.head.slice for m in maps] == [0, 1, 2]
    for m in maps:
        meta = parse_meta(m.attributes)
        assert meta["DataRole"] == ["Quantitative"] and meta["InlineCMR_unit"] == ["ms"]
        assert m.data.dtype == np.uint16 and (m.data > 0).mean() > 0.2
