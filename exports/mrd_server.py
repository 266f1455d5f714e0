"""``python -m exports serve``: the inline server on the MRD streaming protocol (FIRE compatible).

::

    python -m exports serve [--host 127.0.0.1] [--port 9002] [--aif-model PATH]
                            [--myocardium-model PATH] [--max-sessions 2] [--threads 2]
                            [--first-message-timeout-s 5] [--max-sessions-per-client 1]
                            [--backend auto]

The models are loaded once at start (``deployment.artifact.load_artifact``: sha256 verified), run
once to warm up, and stay resident; the AIF model runs on the backend
``deployment.onnx_backend.select_backend`` picks (``--backend auto``: the fastest of TorchScript
and the ONNX files beside the artifact that passes the parity check; logged). ``--port 0``
binds a free port; the address is printed on stdout as ``listening on HOST:PORT``. Each
connection is one session, served in its own thread.

Idle clients cannot stall the scanner: the accept loop never waits (a connection is accepted at
once and handed to its thread), a connection must send its first message (the config) within
``--first-message-timeout-s`` or it is closed, and a **session slot** is taken only once that
first message has arrived: at most ``--max-sessions`` sessions run at a time, at most
``--max-sessions-per-client`` of them from one client address (further sessions wait for a slot
until their deadline). Connections beyond ``max_connections`` in all, or
``max_connections_per_client`` from one address, are answered ``ERR`` and closed at once.

A session:

1. config: a config file name (id 1) or config text (id 2): ``inlinecmr_aif``,
   ``inlinecmr_t1``, ``inlinecmr_t2`` or ``inlinecmr_ecv``;
2. the XML header (id 3); a close (id 4) instead ends the session quietly (a probe);
3. optionally a text message (id 5) of JSON parameters (:mod:`exports.mrd_session`; its
   ``parameters.config`` replaces the config name);
4. images (id 1022) until a close (id 4); waveforms (id 1026) are read and dropped; raw
   acquisitions (id 1008) are refused (the configs work on reconstructed images);
5. the reply: the config's images and texts (:mod:`exports.mrd_aif`, :mod:`exports.mrd_mapping`),
   then a close.

Failures (an unknown config, a malformed or truncated message, a message out of order, too few
frames, missing times, bad parameters, a model error, a timeout) end the session with a text
``ERR <config>: <reason>`` and a close; the server then drains what the client still sends (for
at most ``drain_s``, discarding it) so that the client can read the reply, and serves the next
session. A client that disconnects mid-stream ends only its own session. Memory per session is
bounded: each message by :class:`formats.mrd.stream.StreamLimits`, the images of a session by
``max_session_bytes`` and ``max_images``; a session has an idle timeout and a deadline.

Every session is logged (logger ``inlinecmr.mrd_server``): peer, config, outcome, images in and
out, bytes, and the times to receive, process and send.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployment.artifact import AIF_TASK, MYOCARDIUM_TASK, ArtifactError, load_artifact
from deployment.default_model import deployed_default_aif_model
from deployment.onnx_backend import BACKENDS, select_backend
from exports.aif_pipeline import AIFPipeline
from exports.mapping_pipeline import MyocardiumSegmenter
from exports.mrd_aif import AIF_CONFIG, process_aif
from exports.mrd_mapping import MAPPING_CONFIGS, process_mapping
from exports.mrd_perfusion import PERFUSION_CONFIG, process_perfusion
from exports.mrd_session import InlineModels, Reply, SessionError, SessionParameters
from formats.mrd.header import header_facts
from formats.mrd.stream import (
    AcquisitionMessage,
    Close,
    ConfigFile,
    ConfigText,
    Header,
    ImageMessage,
    Message,
    MRDProtocolError,
    SocketReader,
    StreamLimits,
    Text,
    TruncatedMessageError,
    WaveformMessage,
    read_message,
    send_message,
)

__all__ = [
    "CONFIGS",
    "InlineServer",
    "ServerSettings",
    "SessionLog",
    "add_serve_parser",
    "load_models",
]

LOG = logging.getLogger("inlinecmr.mrd_server")

Processor = Callable[[Sequence[ImageMessage], SessionParameters, InlineModels], Reply]
CONFIGS: dict[str, Processor] = {
    AIF_CONFIG: process_aif,
    **{name: partial(process_mapping, config=name) for name in MAPPING_CONFIGS},
    PERFUSION_CONFIG: process_perfusion,
}
"""Config name -> processor of the received images."""


@dataclass(frozen=True)
class ServerSettings:
    """Bounds of the server (command-line flags of ``python -m exports serve``).

    Attributes:
        max_sessions: sessions served at the same time (a slot is taken once the first message
            of the connection has arrived).
        max_sessions_per_client: sessions of one client address served at the same time.
        max_connections: open connections in all (waiting for their first message, waiting
            for a slot, or in a session); beyond it a new connection is refused.
        max_connections_per_client: open connections from one client address.
        first_message_timeout_s: from accept to the first message (the config) at most.
        idle_timeout_s: longest silence of a client inside a session.
        session_timeout_s: longest session, from accept to the last byte received.
        max_session_bytes: pixel and attribute bytes of the images of one session.
        max_images: images of one session.
        drain_s: after an error, how long to read and discard what the client still sends.
        limits: per-message bounds.
    """

    max_sessions: int = 2
    max_sessions_per_client: int = 1
    max_connections: int = 128
    max_connections_per_client: int = 32
    first_message_timeout_s: float = 5.0
    idle_timeout_s: float = 60.0
    session_timeout_s: float = 900.0
    max_session_bytes: int = 512 << 20
    max_images: int = 4096
    drain_s: float = 10.0
    limits: StreamLimits = field(default_factory=StreamLimits)


@dataclass
class SessionLog:
    """What happened in one session (also written to the log).

    Attributes:
        number: sessions since start, from 1.
        peer: ``host:port`` of the client.
        config: the config name ("" if none arrived).
        status: ``ok``, ``error`` (the client was sent ``ERR``), ``disconnected`` (the client
            left mid-stream), ``empty`` (closed before any data, or a probe), ``idle`` (no first
            message within ``first_message_timeout_s``) or ``refused`` (too many connections).
        error: the reason, for ``error`` and ``disconnected``.
        images_in, images_out, waveforms_in, bytes_in: counts.
        wait_ms: the wait for a session slot, after the first message.
        receive_ms, process_ms, send_ms, total_ms: from accept to the client's close, the
            config's processing, sending the reply, accept to the end of the session.
        summary: the config's figures.
    """

    number: int
    peer: str
    config: str = ""
    status: str = "empty"
    error: str = ""
    images_in: int = 0
    images_out: int = 0
    waveforms_in: int = 0
    bytes_in: int = 0
    wait_ms: float = 0.0
    receive_ms: float = 0.0
    process_ms: float = 0.0
    send_ms: float = 0.0
    total_ms: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One log line."""
        head = f"session {self.number} from {self.peer}: {self.config or '-'} {self.status}"
        counts = f"{self.images_in} images in ({self.bytes_in / 1e6:.2f} MB), {self.images_out} out"
        times = (
            f"slot wait {self.wait_ms:.1f} ms, receive {self.receive_ms:.1f} ms, "
            f"process {self.process_ms:.1f} ms, send {self.send_ms:.1f} ms, "
            f"total {self.total_ms:.1f} ms"
        )
        tail = f"; {self.error}" if self.error else (f"; {self.summary}" if self.summary else "")
        return f"{head}; {counts}; {times}{tail}"


class _Disconnected(Exception):
    """The client closed the connection before its close message."""


class _Admission:
    """Counts of open connections and running sessions, in all and per client address."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._changed = threading.Condition()
        self._connections: dict[str, int] = {}
        self._sessions: dict[str, int] = {}

    def connect(self, host: str) -> str:
        """Count a new connection from ``host``; "" when admitted, else why it is refused."""
        s = self.settings
        with self._changed:
            if sum(self._connections.values()) >= s.max_connections:
                return f"server busy: {s.max_connections} connections open"
            if self._connections.get(host, 0) >= s.max_connections_per_client:
                return f"too many connections from {host} (at most {s.max_connections_per_client})"
            self._connections[host] = self._connections.get(host, 0) + 1
            return ""

    def disconnect(self, host: str) -> None:
        with self._changed:
            self._connections[host] -= 1
            if not self._connections[host]:
                del self._connections[host]

    def take_slot(self, host: str, deadline: float) -> None:
        """Wait until a session slot is free for ``host`` (``time.monotonic()`` deadline).

        Raises:
            TimeoutError: no slot before the deadline.
        """
        s = self.settings

        def free() -> bool:
            return (
                sum(self._sessions.values()) < s.max_sessions
                and self._sessions.get(host, 0) < s.max_sessions_per_client
            )

        with self._changed:
            if not self._changed.wait_for(free, max(0.0, deadline - time.monotonic())):
                raise TimeoutError("no free session slot before the session deadline")
            self._sessions[host] = self._sessions.get(host, 0) + 1

    def release_slot(self, host: str) -> None:
        with self._changed:
            self._sessions[host] -= 1
            if not self._sessions[host]:
                del self._sessions[host]
            self._changed.notify_all()


def _name(message: Message | None) -> str:
    return "end of stream" if message is None else type(message).__name__


class InlineServer:
    """A listening MRD server around resident models.

    Args:
        models: loaded once (:func:`load_models`).
        host, port: where to listen (port 0: a free port, see :attr:`address`).
        settings: bounds (:class:`ServerSettings`).

    Example:
        >>> server = InlineServer(InlineModels(), "127.0.0.1", 0)  # doctest: +SKIP
        >>> threading.Thread(target=server.serve_forever, daemon=True).start()  # doctest: +SKIP
        >>> server.shutdown()  # doctest: +SKIP
    """

    def __init__(
        self,
        models: InlineModels,
        host: str = "127.0.0.1",
        port: int = 9002,
        settings: ServerSettings | None = None,
    ) -> None:
        self.models = models
        self.settings = settings or ServerSettings()
        self._listener = socket.create_server((host, port), backlog=64)
        self._admission = _Admission(self.settings)
        self._stop = threading.Event()
        self._counter = itertools.count(1)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.sessions: deque[SessionLog] = deque(maxlen=1000)
        """The latest sessions, oldest first."""

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound."""
        host, port = self._listener.getsockname()[:2]
        return host, port

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown`; each is served in its own thread (the
        accept loop never waits for a session slot)."""
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            refusal = self._admission.connect(peer[0])
            if refusal:
                self._refuse(conn, peer, refusal)
                continue
            thread = threading.Thread(target=self._serve, args=(conn, peer), daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from a signal handler)."""
        self._stop.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, let running sessions finish (up to ``timeout_s``), close."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout_s)
        self._listener.close()

    def _refuse(self, conn: socket.socket, peer: tuple[str, int], reason: str) -> None:
        """Answer ``ERR`` and close a connection that is over a connection limit."""
        log = SessionLog(next(self._counter), f"{peer[0]}:{peer[1]}", status="refused")
        log.error = reason
        try:
            conn.settimeout(0.5)  # a short reply to a fresh socket: its send buffer is empty
            send_message(conn, Text(f"ERR inlinecmr: {reason}"))
            send_message(conn, Close())
        except OSError:
            pass
        conn.close()
        self.sessions.append(log)
        LOG.warning(log.line())

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        log = SessionLog(next(self._counter), f"{peer[0]}:{peer[1]}")
        try:
            self.session(conn, log, peer[0])
        finally:
            conn.close()
            self._admission.disconnect(peer[0])
            self.sessions.append(log)
            level = logging.INFO if log.status in ("ok", "empty") else logging.WARNING
            LOG.log(level, log.line())
            with self._lock:
                self._threads.discard(threading.current_thread())

    # ---------------------------------------------------------------------------- one session
    def session(self, conn: socket.socket, log: SessionLog, host: str = "") -> None:
        """Serve one connection (module docstring); never raises for what the client does.

        The first message must arrive within ``first_message_timeout_s`` of the accept; only
        then is a session slot of ``host`` taken (held until the session ends)."""
        start = time.monotonic()
        s = self.settings
        first_deadline = start + min(s.first_message_timeout_s, s.session_timeout_s)
        reader = SocketReader(conn, s.idle_timeout_s, first_deadline)
        slot = False
        try:
            try:
                first = read_message(reader, s.limits)
            except TimeoutError:
                log.status = "idle"
                log.error = f"no message within {s.first_message_timeout_s:g} s of connecting"
                self._reply_error(conn, log, log.error, drain_s=0.0)
                return
            if first is None:
                return
            t0 = time.monotonic()
            self._admission.take_slot(host, start + s.session_timeout_s)
            slot = True
            log.wait_ms = 1e3 * (time.monotonic() - t0)
            reader.deadline = start + s.session_timeout_s
            images, params = self._receive(reader, first, log)
            if images is None:
                return
            log.receive_ms = 1e3 * (time.monotonic() - start)
            t0 = time.monotonic()
            reply = CONFIGS[log.config](images, params, self.models)
            log.process_ms = 1e3 * (time.monotonic() - t0)
            t0 = time.monotonic()
            conn.settimeout(s.idle_timeout_s)
            for image in reply.images:
                send_message(conn, image)
            for text in reply.texts:
                send_message(conn, Text(text))
            send_message(conn, Close())
            log.send_ms = 1e3 * (time.monotonic() - t0)
            log.status, log.images_out, log.summary = "ok", len(reply.images), reply.summary
            self._finish(conn, 1.0)
        except (_Disconnected, TruncatedMessageError, ConnectionError) as exc:
            log.status, log.error = "disconnected", f"client left mid-stream ({exc})"
            self._reply_error(conn, log, str(exc))
        except (SessionError, MRDProtocolError, ValueError, TimeoutError) as exc:
            log.status, log.error = "error", str(exc) or type(exc).__name__
            self._reply_error(conn, log, log.error)
        except Exception as exc:  # a model or runtime failure: keep serving the next session
            LOG.exception("session %d: %s", log.number, exc)
            log.status, log.error = "error", f"internal error: {type(exc).__name__}: {exc}"
            self._reply_error(conn, log, log.error)
        finally:
            if slot:
                self._admission.release_slot(host)
            log.bytes_in = reader.bytes_read
            log.total_ms = 1e3 * (time.monotonic() - start)

    def _receive(
        self, reader: SocketReader, first: Message, log: SessionLog
    ) -> tuple[list[ImageMessage] | None, SessionParameters]:
        """Config (``first``), header, parameters and images up to the client's close (None: no
        session)."""
        limits = self.settings.limits
        params = SessionParameters()
        if isinstance(first, ConfigFile):
            log.config = first.name.strip()
        elif isinstance(first, ConfigText):
            log.config = first.text.strip()
        else:
            raise SessionError(f"expected a config (message 1 or 2) first; found {_name(first)}")
        header = read_message(reader, limits)
        if isinstance(header, Close) or header is None:
            return None, params  # a connection probe: config and nothing else
        if not isinstance(header, Header):
            raise SessionError(
                f"expected the XML header (message 3) after the config; found {_name(header)}"
            )
        facts = header_facts(header.xml)
        if facts.field_strength_T is not None:
            LOG.debug("session %d: %s at %s T", log.number, facts.scanner, facts.field_strength_T)
        pending = read_message(reader, limits)
        if isinstance(pending, Text):
            params = SessionParameters.from_text(pending.text)
            log.config = params.config() or log.config
            pending = read_message(reader, limits)
        if log.config not in CONFIGS:
            raise SessionError(
                f"unknown config {log.config!r}; this server runs {', '.join(CONFIGS)}"
            )
        if log.config == AIF_CONFIG and self.models.aif is None:
            raise SessionError(
                f"{AIF_CONFIG} needs an AIF model: the server was started without --aif-model"
            )
        return self._images(reader, pending, log), params

    def _images(
        self, reader: SocketReader, message: Message | None, log: SessionLog
    ) -> list[ImageMessage]:
        """Collect images until the close, within the session bounds."""
        s = self.settings
        images: list[ImageMessage] = []
        total = 0
        while not isinstance(message, Close):
            if message is None:
                raise _Disconnected(
                    f"connection closed after {len(images)} images, before the close message"
                )
            if isinstance(message, ImageMessage):
                total += message.data.nbytes + len(message.attributes)
                if len(images) >= s.max_images or total > s.max_session_bytes:
                    raise SessionError(
                        f"session too large: more than {s.max_images} images or "
                        f"{s.max_session_bytes >> 20} MB of image data"
                    )
                images.append(message)
                log.images_in = len(images)
            elif isinstance(message, WaveformMessage):
                log.waveforms_in += 1
            elif isinstance(message, AcquisitionMessage):
                raise SessionError(
                    f"{log.config} processes reconstructed images (message 1022);"
                    " raw acquisitions (1008) are not accepted"
                )
            elif not isinstance(message, Text):
                raise SessionError(f"unexpected {_name(message)} after the images started")
            message = read_message(reader, s.limits)
        return images

    def _reply_error(
        self, conn: socket.socket, log: SessionLog, reason: str, drain_s: float | None = None
    ) -> None:
        """Send ``ERR`` and a close (if the client still listens), then drain (``drain_s``,
        default the settings') and close."""
        try:
            conn.settimeout(self.settings.idle_timeout_s)
            send_message(conn, Text(f"ERR {log.config or 'inlinecmr'}: {reason}"))
            send_message(conn, Close())
        except OSError:
            return
        self._finish(conn, self.settings.drain_s if drain_s is None else drain_s)

    @staticmethod
    def _finish(conn: socket.socket, drain_s: float) -> None:
        """Half-close, then read and discard until the client closes (at most ``drain_s``), so
        that unread client data does not reset the connection before it has read the reply."""
        try:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + drain_s
            sink = bytearray(1 << 16)
            while (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                if conn.recv_into(sink) == 0:
                    break
        except OSError:
            pass


# -------------------------------------------------------------------------------- models + CLI


def load_models(
    aif_model: Path | None,
    myocardium_model: Path | None,
    aif_backend: str = "auto",
    threads: int = 2,
) -> InlineModels:
    """Load the artifacts once (sha256 verified) and warm them up with one inference each.

    The AIF model runs on the backend :func:`deployment.onnx_backend.select_backend` picks
    (``aif_backend``: ``auto`` = the fastest that passes the parity check; the choice is logged).

    Raises:
        ArtifactError: a missing, changed or wrong-task artifact (the message names the file), or
            an explicitly asked ONNX backend that is missing or fails parity.
    """
    aif = myocardium = None
    aif_sha = myo_sha = ""
    backend = ""
    if aif_model is not None:
        artifact = load_artifact(aif_model, expected_task=AIF_TASK)
        model, choice = select_backend(artifact, aif_backend, threads)
        LOG.info("AIF model %s: %s", artifact.path.name, choice.describe())
        aif = AIFPipeline(model)
        aif_sha, backend = artifact.metadata["weights_sha256"], choice.name
    if myocardium_model is not None:
        artifact = load_artifact(myocardium_model, expected_task=MYOCARDIUM_TASK)
        myocardium = MyocardiumSegmenter(artifact)
        myocardium.probabilities(np.zeros((1, 64, 64), np.float32))
        myo_sha = artifact.metadata["weights_sha256"]
    return InlineModels(aif, myocardium, aif_sha, myo_sha, backend)


def run_serve(args: argparse.Namespace) -> int:
    """The ``serve`` subcommand: serve until SIGINT/SIGTERM; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        models = load_models(args.aif_model, args.myocardium_model, args.backend, args.threads)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        first_message_timeout_s=args.first_message_timeout_s,
        idle_timeout_s=args.idle_timeout_s,
        session_timeout_s=args.session_timeout_s,
        max_session_bytes=args.max_session_mb << 20,
    )
    try:
        server = InlineServer(models, args.host, args.port, settings)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    LOG.info(
        "models loaded in %.0f ms (AIF %s, myocardium %s); configs: %s",
        1e3 * (time.perf_counter() - start),
        args.aif_model or "none",
        args.myocardium_model or "none",
        ", ".join(CONFIGS),
    )
    host, port = server.address
    print(f"listening on {host}:{port}", flush=True)

    def stop(signum: int, _frame: Any) -> None:
        LOG.info("signal %d: stopping", signum)
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    server.shutdown()
    return 0


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``serve`` subcommand."""
    serve = subparsers.add_parser("serve", help="inline MRD streaming server (FIRE compatible)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=9002, help="TCP port (0: a free port)")
    serve.add_argument(
        "--aif-model",
        type=Path,
        default=deployed_default_aif_model(),
        help="AIF artifact (.ts) or name (default: the deployed default)",
    )
    serve.add_argument(
        "--myocardium-model",
        type=Path,
        help="myocardium artifact (.ts): T2/ECV in the myocardium with AHA "
        "segments; without it whole-slice maps",
    )
    serve.add_argument("--max-sessions", type=int, default=2, help="concurrent sessions")
    serve.add_argument(
        "--max-sessions-per-client",
        type=int,
        default=1,
        help="concurrent sessions from one client address",
    )
    serve.add_argument(
        "--first-message-timeout-s",
        type=float,
        default=5.0,
        help="a connection that sends no config within this time is closed",
    )
    serve.add_argument("--threads", type=int, default=2, help="CPU threads of the models")
    serve.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="AIF inference backend; auto: the fastest of the artifact's TorchScript model and "
        "the ONNX files next to it (NAME.onnx, NAME.int8.onnx) that passes the parity check",
    )
    serve.add_argument(
        "--idle-timeout-s",
        type=float,
        default=60.0,
        help="longest silence of a client within a session",
    )
    serve.add_argument("--session-timeout-s", type=float, default=900.0, help="longest session")
    serve.add_argument(
        "--max-session-mb", type=int, default=512, help="image data one session may send"
    )
    serve.set_defaults(handler=run_serve)
    return serve
