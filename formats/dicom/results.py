"""Results as DICOM objects, written with highdicom: masks as Segmentation, maps as Parametric
Map, each referencing its source images (same study, frame of reference and plane geometry).

- Segmentation (BINARY): one segment per structure present, coded with SNOMED CT: LV blood pool
  (87878005 left ventricle), RV blood pool (53085002 right ventricle), myocardium (49848007 LV
  myocardium), category "anatomical structure" (91723000), algorithm type AUTOMATIC with the
  model's name and version.
- Parametric Map: uint16 stored values with a real-world value mapping ``value = slope *
  stored`` for stored values 1-65535 (:data:`QUANTITIES`: T1 0.1 ms, T2 0.01 ms, ECV 0.01 %,
  MBF and PS 0.001 ml/min/g, Vb and Visf 0.0001 ml/g), so viewers show the quantity in its
  unit; stored 0 lies outside the mapped range and marks pixels without a value (NaN in the
  HDF5: outside the analysed myocardium, or a pixel not fitted). Rounding error at most half a
  step; values beyond the last step are stored as 65535. A default window spans the map's
  1st-99th percentiles.

The source images may be headers only (no pixel data needed). The patient and study attributes
of the output come from the source images, i.e. from the DICOM files, never from the HDF5.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "QUANTITIES",
    "SEGMENTS",
    "Provenance",
    "Quantity",
    "parametric_map",
    "segmentation",
]


@dataclass(frozen=True)
class Quantity:
    """How a map is stored: label, explanation, UCUM unit, quantity code, slope per stored unit."""

    label: str
    explanation: str
    unit: Code
    definition: Code
    slope: float


_ML_MIN_G = Code("mL/min/g", "UCUM", "milliliter per minute per gram")
_ML_G = Code("mL/g", "UCUM", "milliliter per gram")
QUANTITIES = {
    "t1_ms": Quantity("T1", "T1 in ms", codes.UCUM.Millisecond, codes.DCM.T1, 0.1),
    "t2_ms": Quantity("T2", "T2 in ms", codes.UCUM.Millisecond, codes.DCM.T2, 0.01),
    "ecv_percent": Quantity(
        "ECV",
        "extracellular volume fraction in %",
        codes.UCUM.Percent,
        Code("ECV", "99INLINECMR", "Extracellular volume fraction"),
        0.01,
    ),
    "mbf_ml_min_g": Quantity(
        "MBF",
        "myocardial blood flow in ml/min/g",
        _ML_MIN_G,
        codes.DCM.AbsoluteRegionalBloodFlow,
        0.001,
    ),
    "ps_ml_min_g": Quantity(
        "PS",
        "permeability-surface area product in ml/min/g",
        _ML_MIN_G,
        Code("PS", "99INLINECMR", "Permeability-surface area product"),
        0.001,
    ),
    "vb_ml_g": Quantity(
        "VB", "blood volume in ml/g", _ML_G, codes.DCM.AbsoluteRegionalBloodVolume, 0.0001
    ),
    "visf_ml_g": Quantity(
        "VISF",
        "interstitial volume in ml/g",
        _ML_G,
        Code("VISF", "99INLINECMR", "Interstitial volume per gram"),
        0.0001,
    ),
}
"""Map dataset name (results HDF5) -> its Parametric Map encoding."""

SEGMENTS = {
    1: ("LV blood pool", codes.SCT.LeftVentricle),
    2: ("RV blood pool", codes.SCT.RightVentricle),
    3: ("Myocardium", codes.SCT.LeftVentricleMyocardium),
}
"""Label value (AIF mask 1 LV, 2 RV; 3 myocardium) -> segment label and SNOMED CT type."""


@dataclass(frozen=True)
class Provenance:
    """Who made the object: the model (or method) and the run.

    Attributes:
        algorithm: e.g. ``aif_resunet3cs`` or ``inline-cmr mapping``.
        version: model version: the artifact's weights sha256, shortened ("" without a model).
        series_uid, series_number: the output series.
        instance_number: the object's number in that series.
    """

    algorithm: str
    version: str
    series_uid: str
    series_number: int
    instance_number: int


def software_version() -> str:
    """``inline-cmr <version>`` of the installed package (``inline-cmr`` when not installed)."""
    try:
        return f"inline-cmr {importlib.metadata.version('inline-cmr')}"
    except importlib.metadata.PackageNotFoundError:
        return "inline-cmr"


def _common(provenance: Provenance) -> dict:
    return {
        "series_instance_uid": provenance.series_uid,
        "series_number": provenance.series_number,
        "sop_instance_uid": hd.UID(),
        "instance_number": provenance.instance_number,
        "manufacturer": "inline-cmr",
        "manufacturer_model_name": provenance.algorithm[:64],
        "software_versions": software_version(),
        "device_serial_number": provenance.version[:16] or "0",
    }


def segmentation(
    source: Dataset,
    labels: np.ndarray,
    provenance: Provenance,
    further_sources: Sequence[Dataset] = (),
    description: str = "",
) -> hd.seg.Segmentation:
    """A binary Segmentation of one image plane.

    Args:
        source: header of the image whose pixels ``labels`` matches (rows x columns).
        labels: uint8 [rows, columns] label map, values in :data:`SEGMENTS` (0 background).
        provenance: algorithm and output series.
        further_sources: other images the labels were derived from (same study).
        description: ``SeriesDescription`` (short text).

    Raises:
        ValueError: a shape other than the source's, or no labelled pixel.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"labels {labels.shape} vs source image {source.Rows}x{source.Columns}")
    present = [v for v in SEGMENTS if (labels == v).any()]
    if not present:
        raise ValueError("no labelled pixel")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=provenance.algorithm[:64],
        family=codes.DCM.ArtificialIntelligence,
        version=provenance.version[:64] or software_version(),
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=SEGMENTS[value][0],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=SEGMENTS[value][1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(present, start=1)
    ]
    stack = np.stack([labels == v for v in present], axis=-1)[None]  # [1, R, C, S]
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        further_source_images=list(further_sources) or None,
        series_description=description[:64] or None,
        **_common(provenance),
    )


def stored_values(values: np.ndarray, quantity: Quantity) -> np.ndarray:
    """uint16 stored values of a map: round(value / slope) clipped to 1-65535; 0 where NaN.

    Example:
        >>> q = QUANTITIES["t2_ms"]
        >>> stored_values(np.array([[48.123, np.nan]]), q).tolist()
        [[4812, 0]]
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    stored = np.zeros(values.shape, np.uint16)
    stored[finite] = np.clip(np.round(values[finite] / quantity.slope), 1, 65535)
    return stored


def parametric_map(
    source: Dataset,
    values: np.ndarray,
    quantity_name: str,
    provenance: Provenance,
    further_sources: Sequence[Dataset] = (),
    description: str = "",
) -> hd.pm.ParametricMap:
    """A Parametric Map of one image plane (module docstring).

    Args:
        source: header of the image whose pixels ``values`` matches.
        values: float [rows, columns] map, NaN where there is no value.
        quantity_name: a key of :data:`QUANTITIES` (``t1_ms``, ``t2_ms``, ``ecv_percent``).
        provenance, further_sources, description: as for :func:`segmentation`.

    Raises:
        ValueError: unknown quantity, a shape other than the source's, or no finite value.
    """
    if quantity_name not in QUANTITIES:
        raise ValueError(f"quantity {quantity_name!r}; expected one of {list(QUANTITIES)}")
    quantity = QUANTITIES[quantity_name]
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"map {values.shape} vs source image {source.Rows}x{source.Columns}")
    stored = stored_values(values, quantity)
    if not stored.any():
        raise ValueError("no finite value in the map")
    low, high = np.percentile(stored[stored > 0], [1, 99])
    width = max(float(high - low), 2.0)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=quantity.label,
        lut_explanation=quantity.explanation,
        unit=quantity.unit,
        value_range=(1, 65535),
        slope=quantity.slope,
        intercept=0,
        quantity_definition=quantity.definition,
    )
    result = hd.pm.ParametricMap(
        source_images=[source],
        pixel_array=stored,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=float(low + high) / 2, window_width=width)
        ],
        contains_recognizable_visual_features=False,
        further_source_images=list(further_sources) or None,
        content_label=quantity.label,
        content_description=quantity.explanation,
        series_description=description[:64] or None,
        **_common(provenance),
    )
    _add_frame_anatomy(result)
    return result


def _add_frame_anatomy(result: Dataset) -> None:
    """Frame Anatomy functional group: the heart, an unpaired structure (FrameLaterality U).
    Without it a validator asks for the series' Laterality."""
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(codes.SCT.Heart)]
    anatomy.FrameLaterality = "U"
    result.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
