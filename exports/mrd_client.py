"""A client for the MRD streaming protocol: what a scanner (FIRE) does, from the protocol document.

A session: connect; send the config name (message 1, or 2 as text), the XML header (3), the JSON
parameters as a text (5) if any, the images (1022) and a close (4); meanwhile read the reply
(images, texts) until the server's close. Sending runs in its own thread, so a server that
answers early (an error) is read while the images are still going out.

Example:
    >>> from formats.mrd.images import make_image
    >>> frames = [make_image(f, image_index=t, acquisition_time_stamp=400 * t)
    ...           for t, f in enumerate(series)]  # doctest: +SKIP
    >>> result = run_session(("127.0.0.1", 9002), "inlinecmr_aif", frames,
    ...                      {"n_pd_frames": 2})  # doctest: +SKIP
    >>> result.documents()[0]["features"]["peak_s"], result.images[0].data.shape  # doctest: +SKIP
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from formats.mrd.header import minimal_header_xml
from formats.mrd.stream import (
    Close,
    ConfigFile,
    ConfigText,
    Header,
    ImageMessage,
    Message,
    SocketReader,
    StreamLimits,
    Text,
    encode_message,
    read_message,
)

__all__ = ["SessionResult", "exchange", "run_session", "session_messages"]


@dataclass
class SessionResult:
    """The server's reply to one session.

    Attributes:
        images: images received, in order.
        texts: text messages received, in order.
        closed: the server sent its close message (False: it dropped the connection).
        send_error: why sending stopped early ("" if everything was sent).
        elapsed_s: from before connecting to the server's close (or the end of the stream).
    """

    images: list[ImageMessage] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    closed: bool = False
    send_error: str = ""
    elapsed_s: float = 0.0

    @property
    def errors(self) -> list[str]:
        """Texts flagged as errors (``ERR ...``)."""
        return [t for t in self.texts if t.startswith("ERR")]

    def documents(self) -> list[dict[str, Any]]:
        """The texts that are JSON objects, parsed."""
        return [json.loads(t) for t in self.texts if t.lstrip().startswith("{")]


def session_messages(
    config: str,
    images: Sequence[Message],
    parameters: dict[str, Any] | None = None,
    header_xml: str | None = None,
    config_as_text: bool = False,
) -> list[Message]:
    """The messages of a session, in protocol order, ending with a close."""
    messages: list[Message] = [
        ConfigText(config) if config_as_text else ConfigFile(config),
        Header(header_xml or minimal_header_xml()),
    ]
    if parameters is not None:
        messages.append(Text(json.dumps({"parameters": parameters})))
    return [*messages, *images, Close()]


def exchange(
    address: tuple[str, int],
    messages: Iterable[Message | bytes],
    timeout_s: float = 30.0,
    limits: StreamLimits | None = None,
    end_sending: bool = False,
) -> SessionResult:
    """Send ``messages`` (or raw bytes) on a new connection and read the reply until the close.

    Args:
        address: (host, port) of the server.
        messages: what to send, in order (raw ``bytes`` are sent as they are).
        timeout_s: bound on connecting, on each silence of the server and on the whole reply.
        limits: bounds on each received message.
        end_sending: half-close the connection after the last message (the server then sees
            the end of the stream; a scanner that stopped mid-series).

    Raises:
        TimeoutError: the server did not answer within ``timeout_s``.
        OSError: no connection.
    """
    result = SessionResult()
    start = time.perf_counter()
    sock = socket.create_connection(address, timeout=timeout_s)

    def send() -> None:
        try:
            for message in messages:
                sock.sendall(message if isinstance(message, bytes) else encode_message(message))
            if end_sending:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            result.send_error = f"{type(exc).__name__}: {exc}"

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        reader = SocketReader(sock, timeout_s, time.monotonic() + timeout_s)
        while True:
            message = read_message(reader, limits)
            if message is None or isinstance(message, Close):
                result.closed = message is not None
                break
            if isinstance(message, ImageMessage):
                result.images.append(message)
            elif isinstance(message, Text):
                result.texts.append(message.text)
        result.elapsed_s = time.perf_counter() - start
        sender.join(timeout_s)
    finally:
        sock.close()
    return result


def run_session(
    address: tuple[str, int],
    config: str,
    images: Sequence[Message],
    parameters: dict[str, Any] | None = None,
    header_xml: str | None = None,
    timeout_s: float = 30.0,
) -> SessionResult:
    """One complete session: config, header, parameters, images, close; the reply."""
    return exchange(address, session_messages(config, images, parameters, header_xml), timeout_s)
