"""Idle and greedy clients cannot stall the inline server's scanner session (real sockets).

The scanner is 127.0.0.1; other clients connect from 127.0.0.2 (also this machine's loopback),
so that the per-address limits can tell them apart.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from datamodules.synthetic.aif_phantom import CLASSIC, write_aif_phantoms
from exports.mrd_client import exchange, run_session, session_messages
from exports.mrd_server import InlineServer, load_models
from exports.mrd_session import InlineModels
from formats.mrd.stream import SocketReader, Text, encode_message, read_message
from tests.mrd_cases import BolusTiming, aif_images, export_aif_model, read_aif_phantom, serving

TIMEOUT_S = 20.0
OTHER_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def aif_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aif") / "cases.h5"
    return write_aif_phantoms(path, n_patients=1, seed=5, ranges=CLASSIC)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, aif_phantoms: Path) -> InlineModels:
    path = export_aif_model(BolusTiming(), tmp_path_factory.mktemp("m") / "aif.ts", aif_phantoms)
    return load_models(path, None)


def scanner_session(server: InlineServer, aif_phantoms: Path, timeout_s: float = TIMEOUT_S):
    series, times_s, n_pd, _ = read_aif_phantom(aif_phantoms, "P0000_rest")
    frames = aif_images(series, times_s)
    return run_session(
        server.address, "inlinecmr_aif", frames, {"n_pd_frames": n_pd}, timeout_s=timeout_s
    )


@contextmanager
def idle_connections(
    server: InlineServer, n: int, host: str = "127.0.0.1", send: bytes = b""
) -> Iterator[list[socket.socket]]:
    """``n`` open connections from ``host`` that send ``send`` (nothing by default), then wait."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(n):
            sock = socket.create_connection(server.address, TIMEOUT_S, source_address=(host, 0))
            stack.enter_context(sock)
            sock.sendall(send)
            sockets.append(sock)
        yield sockets


def still_open(sock: socket.socket) -> bool:
    """True when the server has neither closed nor written to the connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""  # data would mean a reply: not idle any more
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def reply_texts(sock: socket.socket) -> list[str]:
    reader = SocketReader(sock, TIMEOUT_S)
    texts = []
    while (message := read_message(reader)) is not None:
        if isinstance(message, Text):
            texts.append(message.text)
    return texts


def test_a_connection_that_sends_nothing_is_closed_after_the_first_message_deadline():
    with serving(InlineModels(), first_message_timeout_s=0.3) as server:
        with idle_connections(server, 1) as (sock,):
            assert reply_texts(sock) == ["ERR inlinecmr: no message within 0.3 s of connecting"]
        config = session_messages("inlinecmr_t1", [])[:1]
        probe = exchange(server.address, config, TIMEOUT_S, end_sending=True)
        assert probe.texts == [] and not probe.closed  # a config alone is still a quiet probe
    assert [log.status for log in server.sessions] == ["idle", "empty"]


def test_twenty_idle_connections_do_not_delay_the_scanner(models, aif_phantoms):
    """Before, two idle connections held both session slots for the idle timeout and the 20th
    connection found the listen queue full; now slots are taken after the first message."""
    with serving(models, first_message_timeout_s=60.0) as server:
        with idle_connections(server, 20) as idle:
            result = scanner_session(server, aif_phantoms, timeout_s=TIMEOUT_S)
            assert all(still_open(sock) for sock in idle)  # served while they wait
    assert result.closed and not result.errors and len(result.images) == 1


def test_one_client_address_holds_at_most_its_share_of_the_session_slots(models, aif_phantoms):
    """Three sessions from another address send their config and header, then stall: with one
    session per client they hold one slot, and the scanner gets the other."""
    stalled = b"".join(encode_message(m) for m in session_messages("inlinecmr_aif", [])[:2])
    settings = {"max_sessions": 2, "first_message_timeout_s": 60.0, "idle_timeout_s": 60.0}
    with serving(models, max_sessions_per_client=1, **settings) as server:
        with idle_connections(server, 3, OTHER_HOST, send=stalled):
            result = scanner_session(server, aif_phantoms)
    assert result.closed and not result.errors and len(result.images) == 1

    with serving(models, max_sessions_per_client=2, **settings) as server:  # the old behaviour
        with idle_connections(server, 3, OTHER_HOST, send=stalled):
            with pytest.raises(TimeoutError):
                scanner_session(server, aif_phantoms, timeout_s=1.0)


def test_connections_beyond_the_per_address_limit_are_refused_at_once(models, aif_phantoms):
    with serving(models, max_connections_per_client=3) as server:
        with idle_connections(server, 3, OTHER_HOST):
            with idle_connections(server, 1, OTHER_HOST) as (refused,):
                assert reply_texts(refused) == [
                    f"ERR inlinecmr: too many connections from {OTHER_HOST} (at most 3)"
                ]
            result = scanner_session(server, aif_phantoms)
    assert result.closed and not result.errors
    assert [log.status for log in server.sessions][:1] == ["refused"]
