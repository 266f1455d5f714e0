"""Where the DICOM node's results go: a peer by C-STORE (``--send-to HOST:PORT:AE``), or a folder
(``--output-dir``).

Sending is capped: at most ``max_attempts`` associations per batch, ``retry_delay_s`` apart
(doubling); a refused association or a failure status is logged with its reason and the files
are left unsent (the node tries again at its next start), never retried forever. Each file the
peer acknowledges is reported to ``on_sent`` at once, so that a node killed while sending does
not send it again.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from formats.atomic_file import atomic_write

__all__ = ["Destination", "FolderSender", "StoreSender"]

LOG = logging.getLogger("exports.dicom_node")

# C-STORE statuses that mean "stored" (success, or a warning such as coercion of data elements)
STORED = {0x0000, 0xB000, 0xB007, 0xB006}


@dataclass(frozen=True)
class Destination:
    """A peer application entity: host, port, AE title."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``HOST:PORT:AE``.

        Example:
            >>> Destination.parse("pacs.local:4242:ORTHANC")
            Destination(host='pacs.local', port=4242, ae_title='ORTHANC')

        Raises:
            ValueError: not three parts, a port that is not 1-65535, or an AE title longer than
                16 characters.
        """
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"--send-to {text!r}: expected HOST:PORT:AE")
        host, port, ae = parts
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--send-to {text!r}: port {port!r}; expected 1-65535")
        if len(ae) > 16:
            raise ValueError(f"--send-to {text!r}: AE title {ae!r} longer than 16 characters")
        return cls(host, int(port), ae)


class StoreSender:
    """Sends files to a :class:`Destination` by C-STORE (module docstring)."""

    def __init__(self, destination: Destination, calling_ae: str, max_attempts: int = 3,
                 retry_delay_s: float = 1.0, timeout_s: float = 30.0) -> None:  # fmt: skip
        self.destination, self.calling_ae = destination, calling_ae
        self.max_attempts, self.retry_delay_s, self.timeout_s = (
            max_attempts, retry_delay_s, timeout_s)  # fmt: skip

    def __str__(self) -> str:
        d = self.destination
        return f"{d.ae_title}@{d.host}:{d.port}"

    def _associate(self, sop_classes: set[str]):  # noqa: ANN202 - pynetdicom's Association
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for sop_class in sorted(sop_classes):
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        d = self.destination
        return ae.associate(d.host, d.port, ae_title=d.ae_title)

    def send(self, study: str, files: Sequence[Path], on_sent: Callable[[Path], None]) -> list[str]:
        """Send ``files`` (of the spool's ``study``); returns the problems left after the last
        attempt ([] = all sent)."""
        import pydicom

        remaining = list(files)
        problems: list[str] = []
        delay = self.retry_delay_s
        for attempt in range(1, self.max_attempts + 1):
            classes = {
                str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in remaining
            }
            problems = []
            assoc = self._associate(classes)
            if not assoc.is_established:
                how = "rejected" if assoc.is_rejected else "not reachable or aborted"
                problems = [f"{self}: association {how}"]
            else:
                try:
                    for path in list(remaining):
                        status = assoc.send_c_store(path)
                        code = int(status.Status) if "Status" in status else None
                        if code in STORED:
                            on_sent(path)
                            remaining.remove(path)
                        else:
                            shown = "no response" if code is None else f"status 0x{code:04X}"
                            problems.append(f"{self}: {path.name}: {shown}")
                finally:
                    assoc.release()
            if not remaining:
                return []
            LOG.warning("send attempt %d of %d: %d file(s) unsent: %s", attempt,
                        self.max_attempts, len(remaining), "; ".join(problems))  # fmt: skip
            if attempt < self.max_attempts:
                time.sleep(delay)
                delay *= 2
        return problems


class FolderSender:
    """Copies files into ``folder/<study>/`` (each atomically)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __str__(self) -> str:
        return str(self.folder)

    def send(self, study: str, files: Sequence[Path], on_sent: Callable[[Path], None]) -> list[str]:
        for path in files:
            target = self.folder / study / path.name
            with atomic_write(target) as tmp:
                shutil.copyfile(path, tmp)
            on_sent(path)
        return []
