"""The MRD (ISMRMRD v1) streaming protocol, as FIRE and python-ismrmrd-server speak it.

A session is a sequence of messages over one TCP connection, all little-endian. Each message
starts with a uint16 id; what follows depends on the id:

====  ====================  =================================================================
id    message               payload
====  ====================  =================================================================
1     config file           1024 bytes: the config name, UTF-8, NUL-terminated and NUL-padded
2     config text           uint32 length, then that many bytes of text (NUL-terminated)
3     header                uint32 length, then the XML flexible data header (NUL-terminated)
4     close                 nothing: all data has been sent (each side sends one)
5     text                  uint32 length, then text (NUL-terminated); FIRE colours a text
                            starting with ``DBG``, ``WRN`` or ``ERR``
1008  acquisition           340-byte AcquisitionHeader, trajectory float32
                            [number_of_samples, trajectory_dimensions], data complex64
                            [active_channels, number_of_samples]
1022  image                 198-byte ImageHeader, uint64 attribute length, the attributes (an
                            ISMRMRD MetaContainer XML, :mod:`formats.mrd.meta`), pixel data
                            [channels, z, y, x] (x fastest) of the header's ``data_type``
1026  waveform              40-byte WaveformHeader, uint32 data [channels, number_of_samples]
====  ====================  =================================================================

The fixed headers are the ``ctypes`` structures of the ``ismrmrd`` package (``ImageHeader``,
``AcquisitionHeader``, ``WaveformHeader``), which are laid out exactly as on the wire on a
little-endian host. (The protocol document gives 240 bytes for the waveform header; the struct
that every implementation sends, C++ and Python, is 40 bytes, alignment padding included.)

Reading is bounded: every length and pixel count is checked against :class:`StreamLimits` before
anything is allocated, so a client cannot make the reader buffer more than the limits allow, and
a stream that ends inside a message raises :class:`TruncatedMessageError`. Text payloads are cut
at the first NUL (FIRE NUL-terminates them; ismrmrd 1.15's own deserializer keeps the NUL and then
fails to parse them). Image pixel types: the eight MRD data types; int32 is read (it is in the
protocol) but never written, because the ``ismrmrd`` Python package decodes MRD_INT as int64.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

import ismrmrd
import numpy as np

if sys.byteorder != "little":  # the ctypes headers are native-endian; the protocol is not
    raise ImportError("formats.mrd.stream needs a little-endian host (the MRD wire format)")

__all__ = [
    "ACQUISITION_HEADER_BYTES",
    "CONFIG_FILE_BYTES",
    "IMAGE_DTYPES",
    "IMAGE_HEADER_BYTES",
    "WAVEFORM_HEADER_BYTES",
    "AcquisitionMessage",
    "ByteSource",
    "Close",
    "ConfigFile",
    "ConfigText",
    "Header",
    "ImageMessage",
    "MalformedMessageError",
    "Message",
    "MessageId",
    "MRDProtocolError",
    "SocketReader",
    "StreamLimits",
    "Text",
    "TruncatedMessageError",
    "WaveformMessage",
    "encode_message",
    "read_message",
    "send_message",
]


class MessageId(IntEnum):
    """Message identifiers of MRD v1 streaming (uint16 on the wire)."""

    CONFIG_FILE = 1
    CONFIG_TEXT = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    ACQUISITION = 1008
    IMAGE = 1022
    WAVEFORM = 1026


CONFIG_FILE_BYTES = 1024
IMAGE_HEADER_BYTES = ctypes.sizeof(ismrmrd.ImageHeader)  # 198
ACQUISITION_HEADER_BYTES = ctypes.sizeof(ismrmrd.AcquisitionHeader)  # 340
WAVEFORM_HEADER_BYTES = ctypes.sizeof(ismrmrd.WaveformHeader)  # 40
assert (IMAGE_HEADER_BYTES, ACQUISITION_HEADER_BYTES, WAVEFORM_HEADER_BYTES) == (198, 340, 40)

IMAGE_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<u2"),  # MRD_USHORT
    2: np.dtype("<i2"),  # MRD_SHORT
    3: np.dtype("<u4"),  # MRD_UINT
    4: np.dtype("<i4"),  # MRD_INT (read only, see the module docstring)
    5: np.dtype("<f4"),  # MRD_FLOAT
    6: np.dtype("<f8"),  # MRD_DOUBLE
    7: np.dtype("<c8"),  # MRD_CXFLOAT
    8: np.dtype("<c16"),  # MRD_CXDOUBLE
}
"""MRD ``data_type`` -> pixel dtype (little-endian)."""
_WRITABLE_TYPES = {dtype: code for code, dtype in IMAGE_DTYPES.items() if code != 4}

_ID = struct.Struct("<H")
_LENGTH = struct.Struct("<I")
_ATTRIBUTE_LENGTH = struct.Struct("<Q")


class MRDProtocolError(ValueError):
    """A stream that breaks the MRD protocol; the message says what and where."""


class MalformedMessageError(MRDProtocolError):
    """An unknown message id, a length above the limits, an unknown pixel type or bad UTF-8."""


class TruncatedMessageError(MRDProtocolError):
    """The stream ended inside a message."""


@dataclass(frozen=True)
class StreamLimits:
    """Upper bounds on what one message may make the reader allocate (bytes).

    Attributes:
        max_text_bytes: config text, XML header and text messages.
        max_attribute_bytes: the MetaContainer of one image.
        max_payload_bytes: pixel data of one image, trajectory + samples of one acquisition,
            samples of one waveform.
    """

    max_text_bytes: int = 1 << 20
    max_attribute_bytes: int = 1 << 20
    max_payload_bytes: int = 64 << 20


@dataclass(frozen=True)
class ConfigFile:
    """Id 1: the name of a configuration the server knows (at most 1023 UTF-8 bytes)."""

    name: str


@dataclass(frozen=True)
class ConfigText:
    """Id 2: the text of a configuration."""

    text: str


@dataclass(frozen=True)
class Header:
    """Id 3: the MRD XML flexible data header (kept as text)."""

    xml: str


@dataclass(frozen=True)
class Close:
    """Id 4: the sender has sent everything."""


@dataclass(frozen=True)
class Text:
    """Id 5: free text (FIRE: logging, ``DBG``/``WRN``/``ERR`` prefixes; here also JSON)."""

    text: str


@dataclass(eq=False)
class ImageMessage:
    """Id 1022: one image.

    Attributes:
        head: the fixed header; on writing, ``data_type``, ``matrix_size``, ``channels`` and
            ``attribute_string_len`` are taken from ``data`` and ``attributes``.
        attributes: MetaContainer XML (:mod:`formats.mrd.meta`), "" for none.
        data: pixels [channels, z, y, x] (``matrix_size`` = (x, y, z)).
    """

    head: ismrmrd.ImageHeader
    attributes: str
    data: np.ndarray


@dataclass(eq=False)
class AcquisitionMessage:
    """Id 1008: one readout.

    Attributes:
        head: the fixed header (sizes taken from the arrays on writing).
        trajectory: float32 [number_of_samples, trajectory_dimensions] (dimensions may be 0).
        data: complex64 [active_channels, number_of_samples].
    """

    head: ismrmrd.AcquisitionHeader
    trajectory: np.ndarray
    data: np.ndarray


@dataclass(eq=False)
class WaveformMessage:
    """Id 1026: physiological or other waveform samples.

    Attributes:
        head: the fixed header (sizes taken from ``data`` on writing).
        data: uint32 [channels, number_of_samples].
    """

    head: ismrmrd.WaveformHeader
    data: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint32))


Message = (
    ConfigFile
    | ConfigText
    | Header
    | Close
    | Text
    | ImageMessage
    | AcquisitionMessage
    | WaveformMessage
)


class ByteSource(Protocol):
    """Anything with ``read(n)`` returning n bytes, or fewer only at the end of the stream
    (a binary file, ``io.BytesIO``, :class:`SocketReader`)."""

    def read(self, n: int, /) -> bytes: ...


class SocketReader:
    """A buffered :class:`ByteSource` over a connected socket, with an idle timeout and a
    deadline.

    Args:
        sock: a connected stream socket.
        idle_timeout_s: longest wait for the next bytes.
        deadline: ``time.monotonic()`` after which reading stops (None: no deadline).
        chunk_bytes: bytes asked of the socket at least per ``recv`` (fewer system calls for
            the many small reads of a message stream); the buffer never holds more than the
            current read plus one chunk.

    ``read`` raises :class:`TimeoutError` when the peer is silent for ``idle_timeout_s`` or
    the deadline passes, and returns fewer bytes than asked only when the peer closed.
    """

    def __init__(
        self,
        sock: socket.socket,
        idle_timeout_s: float = 60.0,
        deadline: float | None = None,
        chunk_bytes: int = 1 << 16,
    ) -> None:
        self.sock = sock
        self.idle_timeout_s = idle_timeout_s
        self.deadline = deadline
        self.chunk_bytes = chunk_bytes
        self.bytes_read = 0
        self._pending = bytearray()
        self._timeout: float | None = None

    def _set_timeout(self) -> float:
        timeout = self.idle_timeout_s
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("session deadline passed while reading")
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout
        return timeout

    def read(self, n: int, /) -> bytes:
        while len(self._pending) < n:
            timeout = self._set_timeout()
            try:
                chunk = self.sock.recv(max(n - len(self._pending), self.chunk_bytes))
            except TimeoutError as exc:
                raise TimeoutError(f"no data from the peer for {timeout:.1f} s") from exc
            if not chunk:
                break
            self._pending += chunk
        data = bytes(self._pending[:n])
        del self._pending[:n]
        self.bytes_read += len(data)
        return data


def _read_exact(source: ByteSource, n: int, what: str) -> bytes:
    data = source.read(n)
    if len(data) != n:
        raise TruncatedMessageError(f"stream ended inside {what}: {len(data)} of {n} bytes")
    return data


def _checked_length(n: int, limit: int, what: str) -> int:
    if n > limit:
        raise MalformedMessageError(f"{what} of {n} bytes exceeds the limit of {limit} bytes")
    return n


def _text(data: bytes, what: str) -> str:
    try:
        return data.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedMessageError(f"{what} is not UTF-8 text ({exc})") from exc


def _read_text(source: ByteSource, limits: StreamLimits, what: str) -> str:
    (length,) = _LENGTH.unpack(_read_exact(source, _LENGTH.size, f"the length of {what}"))
    _checked_length(length, limits.max_text_bytes, what)
    return _text(_read_exact(source, length, what), what)


def _read_image(source: ByteSource, limits: StreamLimits) -> ImageMessage:
    head = ismrmrd.ImageHeader.from_buffer_copy(
        _read_exact(source, IMAGE_HEADER_BYTES, "an image header")
    )
    raw_length = _read_exact(source, _ATTRIBUTE_LENGTH.size, "an image attribute length")
    (length,) = _ATTRIBUTE_LENGTH.unpack(raw_length)
    _checked_length(length, limits.max_attribute_bytes, "image attributes")
    attributes = _text(_read_exact(source, length, "image attributes"), "image attributes")
    dtype = IMAGE_DTYPES.get(head.data_type)
    if dtype is None:
        raise MalformedMessageError(
            f"image data_type {head.data_type}; expected one of {sorted(IMAGE_DTYPES)}"
        )
    x, y, z = (int(n) for n in head.matrix_size)
    shape = (int(head.channels), z, y, x)
    nbytes = _checked_length(
        int(np.prod(shape)) * dtype.itemsize,
        limits.max_payload_bytes,
        f"image data {shape} {dtype}",
    )
    pixels = np.frombuffer(bytearray(_read_exact(source, nbytes, "image data")), dtype=dtype)
    return ImageMessage(head=head, attributes=attributes, data=pixels.reshape(shape))


def _read_acquisition(source: ByteSource, limits: StreamLimits) -> AcquisitionMessage:
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(
        _read_exact(source, ACQUISITION_HEADER_BYTES, "an acquisition header")
    )
    samples, dims = int(head.number_of_samples), int(head.trajectory_dimensions)
    channels = int(head.active_channels)
    traj_bytes, data_bytes = samples * dims * 4, channels * samples * 8
    _checked_length(traj_bytes + data_bytes, limits.max_payload_bytes, "acquisition data")
    trajectory = np.frombuffer(
        bytearray(_read_exact(source, traj_bytes, "a trajectory")), dtype="<f4"
    ).reshape(samples, dims)
    data = np.frombuffer(bytearray(_read_exact(source, data_bytes, "acquisition data")), "<c8")
    return AcquisitionMessage(
        head=head, trajectory=trajectory, data=data.reshape(channels, samples)
    )


def _read_waveform(source: ByteSource, limits: StreamLimits) -> WaveformMessage:
    head = ismrmrd.WaveformHeader.from_buffer_copy(
        _read_exact(source, WAVEFORM_HEADER_BYTES, "a waveform header")
    )
    shape = (int(head.channels), int(head.number_of_samples))
    nbytes = _checked_length(shape[0] * shape[1] * 4, limits.max_payload_bytes, "waveform data")
    data = np.frombuffer(bytearray(_read_exact(source, nbytes, "waveform data")), dtype="<u4")
    return WaveformMessage(head=head, data=data.reshape(shape))


def read_message(source: ByteSource, limits: StreamLimits | None = None) -> Message | None:
    """The next message of a stream, or None if the stream ends cleanly before a message.

    Args:
        source: where the bytes come from (:class:`ByteSource`).
        limits: allocation bounds (:class:`StreamLimits` defaults when None).

    Raises:
        TruncatedMessageError: the stream ends inside a message.
        MalformedMessageError: unknown id, a length above ``limits``, unknown pixel type,
            text that is not UTF-8.
        TimeoutError: from a :class:`SocketReader`.

    Example:
        >>> import io
        >>> read_message(io.BytesIO(encode_message(Text("DBG hello"))))
        Text(text='DBG hello')
    """
    limits = limits or StreamLimits()
    raw = source.read(_ID.size)
    if not raw:
        return None
    if len(raw) != _ID.size:
        raise TruncatedMessageError("stream ended inside a message id: 1 of 2 bytes")
    (code,) = _ID.unpack(raw)
    try:
        kind = MessageId(code)
    except ValueError:
        names = ", ".join(f"{m.value} ({m.name.lower()})" for m in MessageId)
        raise MalformedMessageError(f"unknown message id {code}; expected one of {names}") from None
    if kind is MessageId.CONFIG_FILE:
        return ConfigFile(
            _text(
                _read_exact(source, CONFIG_FILE_BYTES, "a config file name"), "the config file name"
            )
        )
    if kind is MessageId.CONFIG_TEXT:
        return ConfigText(_read_text(source, limits, "config text"))
    if kind is MessageId.HEADER:
        return Header(_read_text(source, limits, "the XML header"))
    if kind is MessageId.CLOSE:
        return Close()
    if kind is MessageId.TEXT:
        return Text(_read_text(source, limits, "a text message"))
    if kind is MessageId.IMAGE:
        return _read_image(source, limits)
    if kind is MessageId.ACQUISITION:
        return _read_acquisition(source, limits)
    return _read_waveform(source, limits)


def _nul_terminated(text: str) -> bytes:
    data = text.encode("utf-8") + b"\0"
    return _LENGTH.pack(len(data)) + data


def _image_bytes(message: ImageMessage) -> bytes:
    data = np.asarray(message.data)
    if data.ndim != 4:
        raise ValueError(f"image data must be [channels, z, y, x], got shape {data.shape}")
    code = _WRITABLE_TYPES.get(data.dtype.newbyteorder("<"))
    if code is None:
        raise ValueError(
            f"image data of dtype {data.dtype} cannot be sent: MRD images are uint16, int16, "
            "uint32, float32, float64, complex64 or complex128 (int32 is misread as int64 by the "
            "ismrmrd Python package; uint8 and bool are not MRD types)"
        )
    attributes = message.attributes.encode("utf-8")
    head = ismrmrd.ImageHeader.from_buffer_copy(bytes(message.head))
    head.data_type = code
    head.channels = data.shape[0]
    head.matrix_size[:] = (data.shape[3], data.shape[2], data.shape[1])
    head.attribute_string_len = len(attributes)
    pixels = np.ascontiguousarray(data, dtype=IMAGE_DTYPES[code]).tobytes()
    return bytes(head) + _ATTRIBUTE_LENGTH.pack(len(attributes)) + attributes + pixels


def _acquisition_bytes(message: AcquisitionMessage) -> bytes:
    data = np.ascontiguousarray(message.data, dtype="<c8")
    traj = np.ascontiguousarray(message.trajectory, dtype="<f4")
    if data.ndim != 2 or traj.ndim != 2 or (traj.size and traj.shape[0] != data.shape[1]):
        raise ValueError(
            f"acquisition data must be [channels, samples] and trajectory [samples, dims]; got "
            f"{data.shape} and {traj.shape}"
        )
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(bytes(message.head))
    head.active_channels, head.number_of_samples = data.shape
    head.trajectory_dimensions = traj.shape[1] if traj.size else 0
    return bytes(head) + traj.tobytes() + data.tobytes()


def _waveform_bytes(message: WaveformMessage) -> bytes:
    data = np.ascontiguousarray(message.data, dtype="<u4")
    if data.ndim != 2:
        raise ValueError(f"waveform data must be [channels, samples], got {data.shape}")
    head = ismrmrd.WaveformHeader.from_buffer_copy(bytes(message.head))
    head.channels, head.number_of_samples = data.shape
    return bytes(head) + data.tobytes()


def encode_message(message: Message) -> bytes:
    """The bytes of one message on the wire (id included).

    Texts are sent NUL-terminated, as FIRE does; sizes and the pixel type in the fixed headers
    are set from the arrays (the message's own header is not modified).

    Raises:
        ValueError: a config name over 1023 bytes, arrays of the wrong rank, a pixel dtype MRD
            cannot carry (see the module docstring).
    """
    if isinstance(message, ConfigFile):
        name = message.name.encode("utf-8")
        if len(name) >= CONFIG_FILE_BYTES:
            raise ValueError(f"config name of {len(name)} bytes; at most {CONFIG_FILE_BYTES - 1}")
        return _ID.pack(MessageId.CONFIG_FILE) + name.ljust(CONFIG_FILE_BYTES, b"\0")
    if isinstance(message, ConfigText):
        return _ID.pack(MessageId.CONFIG_TEXT) + _nul_terminated(message.text)
    if isinstance(message, Header):
        return _ID.pack(MessageId.HEADER) + _nul_terminated(message.xml)
    if isinstance(message, Close):
        return _ID.pack(MessageId.CLOSE)
    if isinstance(message, Text):
        return _ID.pack(MessageId.TEXT) + _nul_terminated(message.text)
    if isinstance(message, ImageMessage):
        return _ID.pack(MessageId.IMAGE) + _image_bytes(message)
    if isinstance(message, AcquisitionMessage):
        return _ID.pack(MessageId.ACQUISITION) + _acquisition_bytes(message)
    if isinstance(message, WaveformMessage):
        return _ID.pack(MessageId.WAVEFORM) + _waveform_bytes(message)
    raise TypeError(f"not an MRD message: {type(message).__name__}")


def send_message(sock: socket.socket, message: Message) -> None:
    """Encode and send one message in full (``socket.sendall``)."""
    sock.sendall(encode_message(message))
