"""MRD image files (HDF5): what python-ismrmrd-server's client saves and its server stores.

Layout (``ismrmrd.Dataset``; one or more top-level groups, e.g. ``dataset`` or a date)::

    /<group>/xml                         the XML header (vlen string [1]), optional
    /<group>/config, config_file,        the config text / name and the JSON parameters
             configAdditional            (as the server's "save data" stores them), optional
    /<group>/image_<series>/header       ImageHeader records [N] (compound)
    /<group>/image_<series>/attributes   MetaContainer XML [N] (vlen string)
    /<group>/image_<series>/data         pixels [N, channels, z, y, x] (complex as real/imag)

Raw data (``/<group>/data``) and waveforms are not read. Errors name the file, group and key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
from ismrmrd.hdf5 import image_header_dtype

from formats.mrd.stream import IMAGE_HEADER_BYTES, ImageMessage

__all__ = ["MRDFileError", "MRDGroup", "read_mrd_image_file"]


class MRDFileError(ValueError):
    """An MRD file that cannot be read; the message names the file, group and key."""


@dataclass
class MRDGroup:
    """One top-level group of an MRD image file.

    Attributes:
        name: the group name.
        xml: the XML header ("" if absent).
        config: the config name or text ("" if absent).
        parameters: the JSON parameters text (``configAdditional``, "" if absent).
        series: image series by their dataset name (``image_0``...), images in file order.
    """

    name: str
    xml: str = ""
    config: str = ""
    parameters: str = ""
    series: dict[str, list[ImageMessage]] = field(default_factory=dict)


def _text(group: h5py.Group, key: str) -> str:
    if key not in group:
        return ""
    value = group[key][()]
    value = value.ravel()[0] if isinstance(value, np.ndarray) else value
    return (value.decode("utf-8") if isinstance(value, bytes) else str(value)).split("\0", 1)[0]


def _images(series: h5py.Group, where: str) -> list[ImageMessage]:
    for key in ("header", "attributes", "data"):
        if key not in series:
            raise MRDFileError(
                f"{where}: expected datasets header, attributes, data; missing {key!r}"
            )
    heads = np.asarray(series["header"][()])
    try:
        records = heads.astype(image_header_dtype)
    except (TypeError, ValueError) as exc:
        raise MRDFileError(f"{where}/header: not ImageHeader records ({exc})") from exc
    assert records.dtype.itemsize == IMAGE_HEADER_BYTES
    data = series["data"][()]
    if data.dtype.names and {"real", "imag"} <= set(data.dtype.names):
        data = data["real"] + 1j * data["imag"]
    attributes = series["attributes"][()]
    if not (len(records) == len(attributes) == len(data)) or data.ndim != 5:
        raise MRDFileError(
            f"{where}: expected header [N], attributes [N] and data [N, channels, z, y, x]; found "
            f"{records.shape}, {attributes.shape} and {data.shape}"
        )
    images = []
    for record, text, pixels in zip(records, attributes, data, strict=True):
        head = ismrmrd.ImageHeader.from_buffer_copy(record.tobytes())
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        images.append(ImageMessage(head=head, attributes=text.split("\0", 1)[0], data=pixels))
    return images


def read_mrd_image_file(path: str | os.PathLike) -> list[MRDGroup]:
    """Every group of an MRD file that holds image series, in file order.

    Raises:
        MRDFileError: not a readable HDF5 file, a malformed image series, or no image series.
    """
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise MRDFileError(f"{path}: expected a readable MRD (HDF5) file; found {exc}") from exc
    groups = []
    with h5:
        for name, group in h5.items():
            if not isinstance(group, h5py.Group):
                continue
            series = {
                key: _images(sub, f"{path}: /{name}/{key}")
                for key, sub in group.items()
                if key.startswith(("image_", "images_")) and isinstance(sub, h5py.Group)
            }
            if series:
                config = _text(group, "config_file") or _text(group, "config")
                groups.append(
                    MRDGroup(
                        name,
                        _text(group, "xml"),
                        config.strip(),
                        _text(group, "configAdditional"),
                        series,
                    )
                )
    if not groups:
        raise MRDFileError(
            f"{path}: expected at least one group with image_<n> series; found "
            "none (raw data files are not imported)"
        )
    return groups
