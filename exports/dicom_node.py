"""The DICOM node: a Storage SCP that scanners and PACS send series to, and that sends the
results back as DICOM (``python -m exports dicom-node``, :mod:`exports.dicom_node_cli`).

- Receiving (pynetdicom, one thread per association): C-ECHO, and C-STORE of MR images (and of
  DICOM SEG / RTSTRUCT labels), in every transfer syntax the importer decodes (uncompressed,
  deflated, and the JPEG, JPEG-LS, JPEG 2000 and RLE syntaxes whose decoder is installed). Each
  file is written to the spool (:mod:`exports.dicom_spool`, atomically and fsynced) *before*
  the success status goes back; a file that cannot be spooled is answered with a failure, so
  the sender keeps it. Only the accepted calling AE titles (A-ASSOCIATE-RJ "calling AE title not
  recognised" otherwise) and peer addresses (connection closed otherwise) are served.
- Gathering: DICOM has no "series complete" message and a study may come over several
  associations, so a study is complete when nothing of it has arrived for ``quiet_time_s``
  (Orthanc's ``StableAge``; MONAI's gateway waits 5 s). ECV pairs the native and post-contrast
  series of one study, so the quiet time is per study.
- Processing, in one worker thread (never in the C-STORE handler): a round of
  :mod:`exports.dicom_node_pipelines` on the images received so far, then the results sent
  (:mod:`exports.dicom_node_sender`), each acknowledged file recorded at once. Images arriving
  for a study already processed start a new round; results already sent are not sent again.
- On start the spool is re-scanned: interrupted rounds are removed and every study with
  unprocessed images or unsent results is taken up again.

Log lines name studies by a hash of the Study Instance UID and cases by their pseudonyms;
patient identifiers stay in the DICOM files and results only.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from exports.dicom_node_pipelines import NodeModels, process_study
from exports.dicom_spool import Spool

__all__ = ["DicomNode", "NodeSettings", "QuietGatherer", "accepted_transfer_syntaxes"]

LOG = logging.getLogger("exports.dicom_node")

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
VERIFICATION = "1.2.840.10008.1.1"

UNCOMPRESSED = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
)
COMPRESSED = (
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)


def accepted_transfer_syntaxes() -> list[str]:
    """The uncompressed syntaxes and the compressed ones whose pixel decoder is installed
    (what :mod:`formats.dicom.pixels` can read)."""
    from pydicom.pixels.decoders.base import get_decoder

    return [*UNCOMPRESSED, *(uid for uid in COMPRESSED if get_decoder(uid).is_available)]


class Sender(Protocol):
    def send(self, study: str, files: list[Path], on_sent: Any) -> list[str]: ...


@dataclass(frozen=True)
class NodeSettings:
    """The node's network settings.

    Attributes:
        ae_title: our AE title (the called AE title peers use).
        host, port: where to listen (port 0: any free port).
        accept_ae: calling AE titles served (others rejected).
        accept_hosts: peer IP addresses served (others disconnected).
        quiet_time_s: a study is complete after this long without a new file of it.
    """

    ae_title: str
    host: str
    port: int
    accept_ae: tuple[str, ...]
    accept_hosts: tuple[str, ...]
    quiet_time_s: float = 5.0


def resolve_hosts(names: Iterable[str]) -> tuple[str, ...]:
    """IP addresses of host names or addresses (``localhost`` -> ``127.0.0.1`` and ``::1``).

    Raises:
        ValueError: a name that does not resolve.
    """
    addresses: set[str] = set()
    for name in names:
        try:
            addresses |= {info[4][0] for info in socket.getaddrinfo(name, None)}
        except socket.gaierror as exc:
            raise ValueError(f"--accept-host {name!r}: cannot resolve ({exc})") from exc
    return tuple(sorted(addresses))


class QuietGatherer:
    """Studies with their last arrival time; :meth:`next_quiet` hands out one that has been
    quiet for ``quiet_s`` (thread-safe)."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self._last: dict[str, float] = {}
        self._changed = threading.Condition()

    def touch(self, study: str) -> None:
        """Something of ``study`` arrived now."""
        with self._changed:
            self._last[study] = time.monotonic()
            self._changed.notify_all()

    def last_arrival(self, study: str) -> float | None:
        with self._changed:
            return self._last.get(study)

    def next_quiet(self, timeout_s: float) -> str | None:
        """The study quiet the longest, removed from the waiting ones; None after
        ``timeout_s`` without one."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                now = time.monotonic()
                if self._last:
                    study, last = min(self._last.items(), key=lambda item: item[1])
                    if now - last >= self.quiet_s:
                        del self._last[study]
                        return study
                    wait = min(last + self.quiet_s, deadline) - now
                else:
                    wait = deadline - now
                if wait <= 0:
                    return None
                self._changed.wait(wait)


class DicomNode:
    """Receiving, gathering, processing and sending (module docstring).

    Example (the CLI's :func:`exports.dicom_node_cli.run_dicom_node` does this)::

        node = DicomNode(settings, Spool("spool"), models, StoreSender(destination, "INLINECMR"))
        host, port = node.start()
        ...
        node.stop()
    """

    def __init__(
        self, settings: NodeSettings, spool: Spool, models: NodeModels, sender: Sender
    ) -> None:
        self.settings, self.spool, self.models, self.sender = settings, spool, models, sender
        self.gatherer = QuietGatherer(settings.quiet_time_s)
        self._server: Any = None
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="dicom-node-worker", daemon=True)
        self._arrived: dict[str, float] = {}  # study -> wall time of its last file (for timing)

    # ------------------------------------------------------------------------------ receiving

    def _application_entity(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.settings.ae_title)
        ae.require_calling_aet = list(self.settings.accept_ae)
        ae.maximum_associations = 8
        syntaxes = accepted_transfer_syntaxes()
        for sop_class in (MR_IMAGE_STORAGE, SEGMENTATION_STORAGE, RT_STRUCTURE_SET_STORAGE):
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(VERIFICATION, list(UNCOMPRESSED[:2]))
        return ae

    def _on_store(self, event: Any) -> int:
        """Spool the file, then acknowledge it (0x0000); 0xA700 when it cannot be spooled,
        0xC000 when it has no study or instance UID."""
        try:
            study_uid = str(event.dataset.StudyInstanceUID)
            sop_uid = str(event.request.AffectedSOPInstanceUID)
        except Exception:  # noqa: BLE001 - any undecodable dataset is refused the same way
            LOG.warning("refused a C-STORE from %s: no decodable Study Instance UID",
                        event.assoc.requestor.ae_title)  # fmt: skip
            return 0xC000
        try:
            study = self.spool.store(study_uid, sop_uid, event.encoded_dataset())
        except OSError as exc:
            LOG.error("cannot spool a received file (%s); answered 'out of resources'",
                      exc.strerror)  # fmt: skip
            return 0xA700
        self._arrived[study] = time.time()
        self.gatherer.touch(study)
        return 0x0000

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        LOG.warning("association from %s (calling AE %r) rejected: AE title not accepted",
                    requestor.address, requestor.ae_title)  # fmt: skip

    def _verify_peer(self, request: Any, client_address: Any) -> bool:
        if client_address[0] in self.settings.accept_hosts:
            return True
        LOG.warning("connection from %s closed: address not accepted", client_address[0])
        return False

    def start(self) -> tuple[str, int]:
        """Take up the spool's unfinished studies and start serving; returns (host, port)."""
        from pynetdicom import evt

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        removed = self.spool.remove_interrupted_rounds()
        pending = [s for s in self.spool.studies()
                   if self.spool.needs_round(s) or self.spool.unsent(s)]  # fmt: skip
        if removed or pending:
            LOG.info("spool: %d interrupted round(s) removed, %d unfinished stud(ies) taken up",
                     removed, len(pending))  # fmt: skip
        for study in pending:
            self.gatherer.touch(study)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        address = (self.settings.host, self.settings.port)
        self._server = self._application_entity().start_server(
            address, block=False, evt_handlers=handlers
        )
        self._server.verify_request = self._verify_peer
        self._worker.start()
        host, port = self._server.server_address[:2]
        LOG.info("%s listening on %s:%d; accepting AE %s from %s; quiet time %.1f s",
                 self.settings.ae_title, host, port, ", ".join(self.settings.accept_ae),
                 ", ".join(self.settings.accept_hosts), self.settings.quiet_time_s)  # fmt: skip
        return host, port

    def stop(self) -> None:
        """Stop serving, let the worker finish its study, and return."""
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join()

    # ------------------------------------------------------------------------------ processing

    def _work(self) -> None:
        while not self._stop.is_set():
            study = self.gatherer.next_quiet(timeout_s=0.5)
            if study is None:
                continue
            try:
                self.finish(study)
            except Exception:  # noqa: BLE001 - one study's failure must not stop the node
                LOG.exception("study %s: processing failed; its files stay in the spool", study)

    def finish(self, study: str) -> None:
        """Process the study's new images (if any) and send its unsent results."""
        if self.spool.needs_round(study):
            self._process(study)
        unsent = self.spool.unsent(study)
        last = self.spool.last_round(study)
        if not unsent or last is None:
            return
        start = time.perf_counter()
        files = [last.results_folder / name for name in unsent]
        problems = self.sender.send(
            study, files, lambda path: self.spool.mark_sent(study, path.name)
        )
        left = len(self.spool.unsent(study))
        since = time.time() - self._arrived[study] if study in self._arrived else None
        LOG.info("study %s: sent %d of %d result(s) to %s in %.2f s%s", study,
                 len(files) - left, len(files), self.sender, time.perf_counter() - start,
                 "" if since is None else f"; {since:.2f} s after its last image")  # fmt: skip
        for problem in problems:
            LOG.error("study %s: not sent: %s", study, problem)

    def _process(self, study: str) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        folder, images = self.spool.begin_round(study)
        try:
            report = process_study(
                folder / "input", folder / "work", folder / "results", self.models,
                self.spool.salt,
            )  # fmt: skip
            lines, problems = report.lines, report.problems
        except Exception as exc:  # noqa: BLE001 - recorded as the round's problem, not retried
            LOG.exception("study %s: round failed", study)
            lines, problems = [], [f"{type(exc).__name__}: {exc}"]
            for path in (folder / "results").glob("*"):
                path.unlink()
        shutil.rmtree(folder / "work", ignore_errors=True)
        done = self.spool.finish_round(folder, images, problems)
        for line in lines:
            LOG.info("study %s: %s", study, line)
        for problem in problems:
            LOG.error("study %s: FAILED: %s", study, problem)
        LOG.info("study %s: round %s: %d image(s) -> %d result(s) in %.2f s (%.2f s CPU)",
                 study, done.folder.name, len(images), len(done.results),
                 time.perf_counter() - start, time.process_time() - cpu)  # fmt: skip
