"""The DICOM import's rules on headers alone: vendor timing, sequence and contrast detection,
slice layout and levels (no pixel data is read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from exports.dicom_import_cli import LABEL_CONVENTION_CHOICES, TASK_CHOICES
from formats.dicom.files import DicomFile
from formats.dicom.labels import LABEL_CONVENTIONS
from formats.dicom.layout import lay_out_mapping_slices
from formats.dicom.series_plan import TASKS, SeriesSkipped, plan_series
from formats.dicom.timing import TimingError, frame_times_s, inversion_times_ms
from tests.dicom.vendor_dicom import Plane, sax_plane


def header(plane: Plane, manufacturer: str, description: str, instance: int, **attrs) -> Dataset:
    ds = Dataset()
    ds.Manufacturer, ds.SeriesDescription, ds.InstanceNumber = manufacturer, description, instance
    ds.SeriesNumber, ds.StudyInstanceUID, ds.FrameOfReferenceUID = 1, "1.2.3", "1.2.4"
    ds.SOPInstanceUID = generate_uid()
    ds.ImagePositionPatient = [float(v) for v in plane.position]
    ds.ImageOrientationPatient = [float(v) for v in (*plane.row, *plane.col)]
    ds.PixelSpacing, ds.Rows, ds.Columns = list(plane.spacing_mm), 8, 8
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def files(headers: list[Dataset]) -> list[DicomFile]:
    return [DicomFile(Path(f"im{i}"), h) for i, h in enumerate(headers)]


PLANE = sax_plane((8, 8), 2.0)


def test_philips_look_locker_takes_trigger_time_not_the_private_tag():
    ti = [110.0, 310, 510, 710, 910, 1110, 1310, 1510, 1710, 1910]
    headers = []
    for i, t in enumerate(ti):
        h = header(PLANE, "Philips Healthcare", "T1_LL_SAX", i + 1, InversionTime="",
                   TriggerTime=t)  # fmt: skip
        h.add_new((0x2005, 0x1572), "FL", 20.0)  # the nominal TI, the same on every image
        headers.append(h)
    series = plan_series("uid", files(headers))
    (planned,) = series.slices
    np.testing.assert_array_equal(planned.times, ti)
    assert planned.time_source == "TriggerTime"
    assert planned.sequence == "look_locker" and series.kind == "t1_native"


def test_philips_molli_without_any_ti_is_skipped_with_every_source_named():
    headers = [header(PLANE, "Philips", "MOLLI", i + 1, InversionTime="") for i in range(8)]
    with pytest.raises(SeriesSkipped, match=r"InversionTime: missing on 8 of 8 images; Philips "
                       r"private \(2005,1572\): missing on 8 of 8 images"):  # fmt: skip
        plan_series("uid", files(headers))


def test_ge_inversion_time_else_trigger_time():
    ti = [100.0, 200, 400, 800]
    with_ti = [header(PLANE, "GE MEDICAL SYSTEMS", "t1 map", i + 1, InversionTime=t)
               for i, t in enumerate(ti)]  # fmt: skip
    assert inversion_times_ms(with_ti, "ge").source == "InversionTime"
    with_trigger = [header(PLANE, "GE MEDICAL SYSTEMS", "t1 map", i + 1, TriggerTime=t)
                    for i, t in enumerate(ti)]  # fmt: skip
    times = inversion_times_ms(with_trigger, "ge")
    assert times.source == "TriggerTime" and times.times_ms.tolist() == ti


def test_siemens_perfusion_frame_times_from_acquisition_time_across_midnight():
    clock = ["235958.500000", "235959.500000", "000000.250000", "000001.250000"]
    headers = [header(PLANE, "SIEMENS", "perf", i + 1, AcquisitionTime=c)
               for i, c in enumerate(clock)]  # fmt: skip
    times = frame_times_s(headers, "siemens")
    np.testing.assert_allclose(times.times_s, [0.0, 1.0, 1.75, 2.75])


def test_ge_trigger_time_that_restarts_every_beat_is_not_taken_as_frame_time():
    headers = [header(PLANE, "GE MEDICAL SYSTEMS", "perfusion", i + 1, TriggerTime=150.0 + i,
                      AcquisitionTime=f"1200{i:02d}.0") for i in range(5)]  # fmt: skip
    times = frame_times_s(headers, "ge")
    assert times.source == "AcquisitionTime" and times.times_s.tolist() == [0, 1, 2, 3, 4]
    for h in headers:
        del h.AcquisitionTime
    with pytest.raises(TimingError, match="TriggerTime: not cumulative.*AcquisitionTime: missing"):
        frame_times_s(headers, "ge")


@pytest.mark.parametrize(
    ("ti_in_acquisition_order", "expected"),
    [
        ([100, 1100, 2100, 3100, 4100, 180, 260], "shmolli"),
        ([120, 1120, 2120, 3120, 4120, 200, 1200, 2200], "molli"),
        ([100 + 250.0 * k for k in range(12)], "look_locker"),
        ([100, 180, 260, 350, 500, 700, 1000, 1400, 2000, 2700, 3500], None),  # STONE-like
    ],
)
def test_the_t1_sequence_is_told_by_the_ti_pattern_or_stays_unknown(ti_in_acquisition_order,
                                                                     expected):  # fmt: skip
    headers = [header(PLANE, "SIEMENS", "T1 map SAX", i + 1, InversionTime=float(t))
               for i, t in enumerate(ti_in_acquisition_order)]  # fmt: skip
    (planned,) = plan_series("uid", files(headers)).slices
    assert planned.sequence == expected
    assert (np.diff(planned.times) > 0).all()  # stored in TI order whatever the acquisition


def test_contrast_agent_makes_a_t1_series_post_contrast_unless_named_native():
    def kind(description: str, **attrs) -> str:
        headers = [header(PLANE, "SIEMENS", description, i + 1, InversionTime=float(t), **attrs)
                   for i, t in enumerate([100, 200, 400])]  # fmt: skip
        return plan_series("uid", files(headers)).kind

    assert kind("MOLLI SAX", ContrastBolusAgent="Gadovist") == "post_contrast"
    assert kind("MOLLI SAX native", ContrastBolusAgent="Gadovist") == "t1_native"
    assert kind("MOLLI SAX") == "t1_native" and kind("MOLLI_PC") == "post_contrast"


def test_a_series_with_no_telling_name_or_times_asks_for_task():
    headers = [header(PLANE, "SIEMENS", "sax_4", i + 1, EchoTime=1.2) for i in range(3)]
    with pytest.raises(SeriesSkipped, match="pass --task"):
        plan_series("uid", files(headers))


def mapping_series(offsets_mm: list[float], number: int, description: str, normal_sign=1.0):
    """A T2 series with one slice per offset along the normal (towards the apex)."""
    headers = []
    for k, offset in enumerate(offsets_mm):
        plane = sax_plane((8, 8), 2.0, offset)
        if normal_sign < 0:  # the same positions with row/column swapped: the normal flips
            plane = Plane(plane.position, plane.col, plane.row, plane.spacing_mm)
        for i, te in enumerate([0.0, 30, 60]):
            headers.append(header(plane, "SIEMENS", description, 10 * k + i + 1, EchoTime=te,
                                  SeriesNumber=number))  # fmt: skip
    series = plan_series(f"uid{number}", files(headers))
    series.header.SeriesNumber = number
    return series


@pytest.mark.parametrize("normal_sign", [1.0, -1.0])
def test_slices_are_numbered_and_levelled_from_base_to_apex(normal_sign):
    series = mapping_series([20.0, -10.0, 5.0], 3, "T2map", normal_sign)
    assert lay_out_mapping_slices([series]) == []
    by_offset = {round(float(s.geometry.position @ np.array([1, -1, -1]) / np.sqrt(3)), 0):
                 (s.slice_id, s.level) for s in series.slices}  # fmt: skip
    levels = [v for _, v in sorted(by_offset.items())]
    assert levels == [("slice_0", "basal"), ("slice_1", "mid"), ("slice_2", "apical")]


def test_a_repeated_location_keeps_the_later_series_and_names_override_levels():
    first = mapping_series([0.0], 4, "T2map_SAX_base")
    again = mapping_series([0.5], 6, "T2map_SAX_base")
    dropped = lay_out_mapping_slices([first, again])
    assert [(s.uid, reason) for s, _, reason in dropped] == [
        ("uid4", "repeated at slice_0 (kept series 6)")
    ]
    assert again.slices[0].level == "basal" and again.slices[0].level_source == "series name"


def test_cli_choices_match_the_import():
    assert TASK_CHOICES == TASKS
    assert LABEL_CONVENTION_CHOICES == tuple(sorted(LABEL_CONVENTIONS))


def test_the_aif_contract_wants_one_source_uid_per_frame(tmp_path):
    import h5py

    from formats.aif_contract import AIFContractError, write_aif_case

    uids = np.array(["1.2.3.1", "1.2.3.2"], dtype=h5py.string_dtype())
    with h5py.File(tmp_path / "aif.h5", "w") as h5:
        with pytest.raises(AIFContractError, match=r"sop_instance_uids.*3 UIDs \(one per frame\)"):
            write_aif_case(h5, "c", np.ones((3, 4, 4)), np.arange(3.0), 0, "p",
                           attrs={"sop_instance_uids": uids})  # fmt: skip
