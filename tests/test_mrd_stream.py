"""MRD streaming framing: round trips over socket pairs, the ismrmrd package as the other side,
bounded and checked reads, image meta, frame times, slices and geometry."""

from __future__ import annotations

import io
import socket
import struct
import threading

import ismrmrd
import numpy as np
import pytest
from ismrmrd.serialization import ConfigFile as IsmrmrdConfigFile
from ismrmrd.serialization import ProtocolDeserializer, ProtocolSerializer

from formats.mrd.header import header_facts, minimal_header_xml
from formats.mrd.images import (
    MRDSeriesError,
    aif_frames,
    dicom_geometry,
    frame_times_s,
    make_image,
    mapping_slices,
)
from formats.mrd.meta import MetaError, format_meta, parse_meta
from formats.mrd.stream import (
    AcquisitionMessage,
    Close,
    ConfigFile,
    ConfigText,
    Header,
    ImageMessage,
    MalformedMessageError,
    SocketReader,
    StreamLimits,
    Text,
    TruncatedMessageError,
    WaveformMessage,
    encode_message,
    read_message,
    send_message,
)

TIMEOUT_S = 10.0


def some_messages() -> list:
    rng = np.random.default_rng(0)
    acquisition_head = ismrmrd.AcquisitionHeader()
    acquisition_head.scan_counter = 17
    waveform_head = ismrmrd.WaveformHeader()
    waveform_head.waveform_id = 2
    return [
        ConfigFile("inlinecmr_aif"),
        ConfigText("<config>å</config>"),
        Header(minimal_header_xml()),
        Text('{"parameters": {"n_pd_frames": "2"}}'),
        make_image(
            rng.random((5, 7), dtype=np.float32),
            image_index=4,
            slice_index=2,
            meta={"InversionTime": 105.5},
        ),
        make_image(rng.integers(0, 4000, (3, 4)).astype(np.uint16)),
        make_image((rng.random((2, 3)) + 1j).astype(np.complex64)),
        AcquisitionMessage(
            acquisition_head,
            rng.random((6, 2), dtype=np.float32),
            (rng.random((4, 6)) + 1j * rng.random((4, 6))).astype(np.complex64),
        ),
        AcquisitionMessage(
            acquisition_head, np.zeros((6, 0), np.float32), np.ones((1, 6), np.complex64)
        ),
        WaveformMessage(waveform_head, rng.integers(0, 2**32, (2, 9), dtype=np.uint32)),
        Close(),
    ]


def assert_same(sent, received) -> None:
    """Same kind and the same bytes on the wire (headers, meta text, pixels, dtype)."""
    assert type(sent) is type(received)
    assert encode_message(sent) == encode_message(received)
    if hasattr(sent, "data"):
        assert received.data.dtype == np.asarray(sent.data).dtype


def test_every_message_kind_round_trips_over_a_socket_pair():
    left, right = socket.socketpair()
    messages = some_messages()
    with left, right:
        sender = threading.Thread(target=lambda: [send_message(left, m) for m in messages])
        sender.start()
        reader = SocketReader(right, idle_timeout_s=TIMEOUT_S)
        received = [read_message(reader) for _ in messages]
        sender.join(TIMEOUT_S)
        left.shutdown(socket.SHUT_WR)
        assert read_message(reader) is None  # a clean end of the stream between messages
    for sent, got in zip(messages, received, strict=True):
        assert_same(sent, got)
    assert reader.bytes_read == sum(len(encode_message(m)) for m in messages)


def test_wire_layout_matches_the_protocol_document():
    data = encode_message(ConfigFile("inlinecmr_t2"))
    assert len(data) == 2 + 1024 and data[:2] == b"\x01\x00" and data[2:14] == b"inlinecmr_t2"
    text = encode_message(Text("DBG hi"))
    assert text == b"\x05\x00" + struct.pack("<I", 7) + b"DBG hi\x00"  # NUL-terminated
    image = make_image(np.arange(6, dtype=np.uint16).reshape(2, 3), meta={"A": 1})
    data = encode_message(image)
    assert data[:2] == struct.pack("<H", 1022)
    head = ismrmrd.ImageHeader.from_buffer_copy(data[2:200])
    assert list(head.matrix_size) == [3, 2, 1] and head.data_type == 1 and head.channels == 1
    (length,) = struct.unpack("<Q", data[200:208])
    assert data[208 : 208 + length].decode() == image.attributes
    assert data[208 + length :] == np.arange(6, dtype="<u2").tobytes()  # x fastest
    waveform = encode_message(WaveformMessage(ismrmrd.WaveformHeader(), np.ones((2, 3), np.uint32)))
    assert len(waveform) == 2 + 40 + 2 * 3 * 4
    assert encode_message(Close()) == b"\x04\x00"


def test_the_ismrmrd_package_reads_what_we_write_and_we_read_what_it_writes():
    ours = make_image(
        np.arange(12, dtype=np.float32).reshape(3, 4), image_index=5, meta={"InversionTime": 100.0}
    )
    theirs = next(ProtocolDeserializer(io.BytesIO(encode_message(ours))).deserialize())
    assert isinstance(theirs, ismrmrd.Image) and theirs.image_index == 5
    np.testing.assert_array_equal(theirs.data, ours.data)
    assert theirs.meta["InversionTime"] == "100.0"

    stream = io.BytesIO()
    serializer = ProtocolSerializer(stream)
    image = ismrmrd.Image.from_array(np.arange(6, dtype=np.int16).reshape(2, 3))
    image.image_series_index = 7
    image.meta = {"DataRole": "Image"}
    serializer.serialize(IsmrmrdConfigFile("inlinecmr_t1"))
    serializer.serialize(image)
    serializer.serialize("WRN careful")
    serializer.close()
    stream.seek(0)
    received = []
    while (message := read_message(stream)) is not None:
        received.append(message)
    assert received[0] == ConfigFile("inlinecmr_t1") and received[2] == Text("WRN careful")
    assert received[1].head.image_series_index == 7 and received[1].data.dtype == np.int16
    np.testing.assert_array_equal(received[1].data[0, 0], [[0, 1, 2], [3, 4, 5]])
    assert parse_meta(received[1].attributes) == {"DataRole": ["Image"]}
    assert isinstance(received[3], Close)


def test_reads_are_bounded_and_malformed_or_truncated_messages_are_named():
    limits = StreamLimits(max_text_bytes=100, max_attribute_bytes=100, max_payload_bytes=1000)
    huge_text = b"\x05\x00" + struct.pack("<I", 2**31)  # announces 2 GB, sends nothing
    with pytest.raises(MalformedMessageError, match="2147483648 bytes exceeds the limit of 100"):
        read_message(io.BytesIO(huge_text), limits)
    big = encode_message(make_image(np.zeros((20, 20), np.float32)))
    with pytest.raises(MalformedMessageError, match=r"image data \(1, 1, 20, 20\) float32"):
        read_message(io.BytesIO(big), limits)
    with pytest.raises(MalformedMessageError, match="unknown message id 1009"):
        read_message(io.BytesIO(struct.pack("<H", 1009)))
    bad_type = bytearray(encode_message(make_image(np.zeros((2, 2), np.float32))))
    bad_type[4:6] = struct.pack("<H", 12)
    with pytest.raises(MalformedMessageError, match="data_type 12"):
        read_message(io.BytesIO(bytes(bad_type)))
    with pytest.raises(MalformedMessageError, match="not UTF-8"):
        read_message(io.BytesIO(b"\x05\x00" + struct.pack("<I", 2) + b"\xff\xfe"))
    whole = encode_message(make_image(np.zeros((4, 4), np.float32)))
    for cut, where in (
        (1, "message id"),
        (100, "image header"),
        (205, "attribute length"),
        (len(whole) - 1, "image data"),
    ):
        with pytest.raises(TruncatedMessageError, match=f"stream ended inside .*{where}"):
            read_message(io.BytesIO(whole[:cut]))
    assert read_message(io.BytesIO(b"")) is None


def test_pixel_types_mrd_cannot_carry_are_refused_when_writing():
    for dtype in (np.uint8, np.bool_, np.int32, np.int64):
        with pytest.raises(ValueError, match="cannot be sent: MRD images are uint16, int16"):
            encode_message(make_image(np.zeros((2, 2), dtype)))
    with pytest.raises(ValueError, match="at most 1023"):
        encode_message(ConfigFile("x" * 1024))
    # int32 is in the protocol: read it when a C++ sender uses it
    image = bytearray(encode_message(make_image(np.arange(4, dtype=np.float32).reshape(2, 2))))
    image[4:6] = struct.pack("<H", 4)
    assert read_message(io.BytesIO(bytes(image))).data.dtype == np.dtype("<i4")


def test_socket_reader_gives_up_on_a_silent_peer():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x05\x00")
        with pytest.raises(TimeoutError, match="no data from the peer for 0.2 s"):
            read_message(SocketReader(right, idle_timeout_s=0.2))


def test_meta_round_trip_and_errors():
    entries = {
        "DataRole": "Quantitative",
        "ROI_LV": [1.0, 0, 0, 1, 0, 1, 2.5, 3.25],
        "WindowCenter": 50,
        "Text": "a<b&c",
    }
    parsed = parse_meta(format_meta(entries) + "\0")
    assert parsed["ROI_LV"] == ["1.0", "0", "0", "1", "0", "1", "2.5", "3.25"]
    assert parsed["Text"] == ["a<b&c"] and parsed["WindowCenter"] == ["50"]
    theirs = ismrmrd.Meta.deserialize(format_meta(entries))  # the ismrmrd package agrees
    assert theirs["DataRole"] == "Quantitative" and theirs["ROI_LV"][6] == "2.5"
    assert parse_meta(ismrmrd.Meta({"A": ["1", "2"]}).serialize()) == {"A": ["1", "2"]}
    assert parse_meta("") == {}
    with pytest.raises(MetaError, match="not XML"):
        parse_meta("<ismrmrdMeta>")
    with pytest.raises(MetaError, match="expected <ismrmrdMeta>"):
        parse_meta("<other/>")


def frames(stamps: list[int], physiology: list[int] | None = None) -> list[ImageMessage]:
    images = [
        make_image(np.full((2, 3), t, np.float32), image_index=t, acquisition_time_stamp=s)
        for t, s in enumerate(stamps)
    ]
    for image, p in zip(images, physiology or [0] * len(images), strict=True):
        image.head.physiology_time_stamp[0] = p
    return images


def test_frame_times_from_acquisition_or_physiology_stamps():
    times, source = frame_times_s(frames([1000, 1400, 1820]))
    assert source == "acquisition" and times.tolist() == [0.0, 1.0, 2.05]
    before_midnight = 34_560_000 - 200
    times, _ = frame_times_s(frames([before_midnight, 200]))
    assert times.tolist() == [0.0, 1.0]  # 0.5 s before and 0.5 s after midnight
    times, source = frame_times_s(frames([0, 0, 0], [10, 410, 810]))
    assert source == "physiology" and times.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(MRDSeriesError, match="missing frame times: .*acquisition or physiology"):
        frame_times_s(frames([5, 5, 5]))
    with pytest.raises(MRDSeriesError, match="physiology"):
        frame_times_s(frames([1000, 1400, 1820]), "physiology")


def test_aif_frames_are_ordered_by_image_index_and_transposed_to_ro_e1():
    images = frames([1000, 1400, 1800])
    result = aif_frames([images[2], images[0], images[1]])
    assert result.series.shape == (3, 3, 2)  # [T, RO = x, E1 = y]
    assert result.series[:, 0, 0].tolist() == [0.0, 1.0, 2.0]
    images[1].head.image_index = 0
    with pytest.raises(MRDSeriesError, match=r"image_index repeated: \[0\]"):
        aif_frames(images)


def test_mapping_slices_sort_by_time_and_need_times():
    images = [
        make_image(
            np.full((2, 2), ti, np.float32),
            image_index=k,
            slice_index=s,
            meta={"InversionTime": ti},
        )
        for s in (1, 0)
        for k, ti in enumerate((300.0, 100.0, 200.0))
    ]
    slices = mapping_slices(images, "InversionTime")
    assert [s.slice_index for s in slices] == [0, 1]
    assert slices[0].times_ms.tolist() == [100, 200, 300]
    assert slices[0].images[:, 0, 0].tolist() == [100, 200, 300]
    given = mapping_slices(images, "T2PrepDuration", [30.0, 10.0, 20.0])
    assert given[1].images[:, 0, 0].tolist() == [100, 200, 300]  # 10, 20, 30 ms
    with pytest.raises(MRDSeriesError, match="missing times: 3 of 3 images lack .*T2PrepDuration"):
        mapping_slices(images, "T2PrepDuration")
    with pytest.raises(MRDSeriesError, match="3 images but 2 times"):
        mapping_slices(images, "T2PrepDuration", [1.0, 2.0])


def test_dicom_geometry_of_an_mrd_image():
    image = make_image(
        np.zeros((4, 6), np.float32), pixel_spacing_mm=(2.0, 3.0), position_mm=(10.0, 20.0, 30.0)
    )
    geometry = dicom_geometry(image)
    # first pixel centre: 10 - (12 - 2) / 2 along x, 20 - (12 - 3) / 2 along y
    assert geometry["image_position_patient"] == [5.0, 15.5, 30.0]
    assert geometry["pixel_spacing_mm"] == [3.0, 2.0]  # between rows, between columns
    assert geometry["image_orientation_patient"] == [1, 0, 0, 0, 1, 0]
    assert geometry["slice_location_mm"] == 30.0


def test_header_facts_are_read_leniently():
    facts = header_facts(minimal_header_xml(3.0, "perf", patient_id="123"))
    assert (facts.field_strength_T, facts.protocol, facts.patient_id) == (3.0, "perf", "123")
    assert facts.scanner == "inline-cmr"
    assert header_facts("Dummy XML header") == header_facts("")
