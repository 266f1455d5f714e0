"""Shared material of the MRD tests: phantom series as MRD images, models, MRD files.

``BolusTiming`` stands in for a trained AIF network: it labels the bright pixels of a
preprocessed series by the time of their peak (early: RV, late: LV), which finds the LV and RV
of most phantoms (LV Dice > 0.9 on 10 of 12 scans of seed 5), so the server tests check real
labels, contours and curves with a model exported for real.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
import torch
from torch import nn

from deployment.exporter import export_artifact
from exports.mrd_server import InlineServer, ServerSettings
from exports.mrd_session import InlineModels
from formats.mrd.images import TICK_S, make_image
from formats.mrd.meta import format_meta
from formats.mrd.stream import ImageMessage
from quantification.aif_preprocessing import AIFPreprocessing, preprocess_aif_series

MIDNIGHT_OFFSET_TICKS = 13_000_000
"""A scan at about 9 am, in 2.5 ms ticks since midnight."""


class BolusTiming(nn.Module):
    """Logits [B, 3, RO, E1] of a preprocessed series [B, T, RO, E1]: background, then the
    pixels brighter than half the maximum split at their mean peak time (late LV, early RV)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak, t_peak = x.max(dim=1)
        bright = (peak > 0.5 * peak.amax(dim=(1, 2), keepdim=True)).float()
        t = t_peak.float()
        count = bright.sum((1, 2), keepdim=True).clamp(min=1.0)
        late = (t > (t * bright).sum((1, 2), keepdim=True) / count).float()
        lv, rv = 12.0 * peak * bright * late, 12.0 * peak * bright * (1.0 - late)
        return torch.stack([torch.full_like(peak, 3.0), lv, rv], dim=1)


class BrokenModel(nn.Module):
    """An AIF model that loads, exports and warms up (on zeros) but fails on a real series."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and bool(x.abs().amax() > 0):
            raise RuntimeError("simulated inference failure")
        return x[:, :3]


def read_aif_phantom(path: Path, case_id: str) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """(series [T, RO, E1], times_s [T], n_pd_frames, mask [RO, E1]) of a phantom case."""
    with h5py.File(path) as h5:
        g = h5[case_id]
        return g["series"][()], g["times_s"][()], int(g.attrs["n_pd_frames"]), g["mask"][()]


def export_aif_model(net: nn.Module, path: Path, phantoms: Path) -> Path:
    """Export ``net`` as an AIF artifact, checked on two preprocessed phantom series."""
    with h5py.File(phantoms) as h5:
        batch = np.stack(
            [
                preprocess_aif_series(
                    g["series"][()], g["times_s"][()], g.attrs["n_pd_frames"]
                ).image
                for g in list(h5.values())[:2]
            ]
        )
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": type(net).__name__.lower()}
    export_artifact(net.eval(), 3, torch.from_numpy(batch), path, meta)
    return path


def aif_images(
    series: np.ndarray,
    times_s: np.ndarray,
    series_index: int = 3,
    stamp: str = "acquisition",
    dtype: type = np.float32,
) -> list[ImageMessage]:
    """The frames [T, RO, E1] as MRD images [y = E1, x = RO], times in 2.5 ms ticks."""
    ticks = np.round(np.asarray(times_s) / TICK_S).astype(np.int64) + MIDNIGHT_OFFSET_TICKS
    scale = 4000.0 / float(series.max()) if dtype == np.uint16 else 1.0
    images = []
    for t, frame in enumerate(series):
        pixels = (np.round(frame * scale) if dtype == np.uint16 else frame).T.astype(dtype)
        stamps = (
            {"acquisition_time_stamp": int(ticks[t])}
            if stamp == "acquisition"
            else {"physiology_time_stamp": int(ticks[t] - ticks[0])}
        )
        images.append(
            make_image(
                pixels,
                series_index=series_index,
                image_index=t,
                position_mm=(10.0, -20.0, 35.0),
                **stamps,
            )
        )
    return images


def mapping_images(
    path: Path,
    slice_ids: list[str],
    meta_key: str | None,
    series_index: int = 5,
    first_tick: int = MIDNIGHT_OFFSET_TICKS,
) -> list[ImageMessage]:
    """The weighted images of phantom slices as MRD images (slice index = position in
    ``slice_ids``), acquired in an interleaved order; times in the meta ``meta_key`` (ms) or
    not at all (None)."""
    images = []
    with h5py.File(path) as h5:
        for slice_index, slice_id in enumerate(slice_ids):
            g = h5[f"case_0000/{slice_id}"]
            stack = g["images"][()]
            times = g["te_ms" if "te_ms" in g else "ti_ms"][()]
            order = np.r_[1 : len(times) : 2, 0 : len(times) : 2]  # odd images first
            for k, n in enumerate(order):
                meta = {meta_key: float(times[n])} if meta_key else {}
                images.append(
                    make_image(
                        stack[n],
                        series_index=series_index,
                        image_index=int(n),
                        slice_index=slice_index,
                        meta=meta,
                        acquisition_time_stamp=first_tick + 400 * k,
                    )
                )
    return images


def write_mrd_file(
    path: Path,
    group: str,
    series: dict[str, list[ImageMessage]],
    xml: str,
    config: str | None = None,
    parameters: dict | None = None,
) -> Path:
    """An MRD image file written by the ``ismrmrd`` package itself (``Dataset.append_image``)."""
    with ismrmrd.Dataset(str(path), group, create_if_needed=True) as dset:
        dset.write_xml_header(xml.encode("utf-8"))
        for name, images in series.items():
            for message in images:
                image = ismrmrd.Image.from_array(message.data)
                head = ismrmrd.ImageHeader.from_buffer_copy(bytes(message.head))
                head.data_type = image.getHead().data_type
                head.matrix_size[:] = image.getHead().matrix_size[:]
                head.channels = image.getHead().channels
                image.setHead(head)
                image.data[:] = message.data
                image.attribute_string = message.attributes or format_meta({})
                dset.append_image(name, image)
    with h5py.File(path, "a") as h5:
        strings = h5py.special_dtype(vlen=bytes)
        if config is not None:
            h5[group].create_dataset("config_file", data=[config.encode()], dtype=strings)
        if parameters is not None:
            text = json.dumps({"parameters": parameters}).encode()
            h5[group].create_dataset("configAdditional", data=[text], dtype=strings)
    return path


@contextmanager
def serving(models: InlineModels, **settings: object) -> Iterator[InlineServer]:
    """A real server on a free port of 127.0.0.1, in a thread, shut down afterwards."""
    server = InlineServer(models, "127.0.0.1", 0, ServerSettings(**settings))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown(timeout_s=20.0)
        thread.join(20.0)
