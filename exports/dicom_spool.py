"""The DICOM node's spool: every received file on disk before it is acknowledged, and what became
of each study, so that a node killed at any moment resumes where it stopped.

Layout (names are hashes of the UIDs, so that paths and logs carry no identifier)::

    SPOOL/salt                            pseudonym salt of this spool (case ids stay the same
                                          across restarts, hence result names too)
    SPOOL/<study>/images/<sop>.dcm        received files, each written atomically and fsynced
    SPOOL/<study>/rounds/<n>/             one processing round, renamed into place when complete:
        input/                            hard links to the images the round processed
        results/                          the DICOM results to send
        manifest.json                     {"images": [...], "results": [...], "problems": [...]}
    SPOOL/<study>/sent.log                result file names acknowledged by the destination,
                                          one per line, appended and fsynced after each C-STORE

A study needs a round when its images differ from those of its last complete round, and needs
sending when a result of that round is not in ``sent.log``. A round folder still named
``<n>.partial`` was interrupted: it is removed and done again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from formats.atomic_file import atomic_write

__all__ = ["Round", "Spool", "uid_key"]


def uid_key(uid: str, length: int = 16) -> str:
    """A file-name-safe hash of a DICOM UID (the spool never names anything by its UID).

    Example:
        >>> uid_key("1.2.3")
        'c47f5b18b8a430e6'
    """
    return hashlib.sha256(uid.encode()).hexdigest()[:length]


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_write(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or is absent, also after a power loss (fsync, rename, fsync)."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _fsync_folder(path.parent)


@dataclass(frozen=True)
class Round:
    """A complete processing round of a study (its folder and manifest)."""

    folder: Path
    images: frozenset[str]
    results: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def results_folder(self) -> Path:
        return self.folder / "results"


class Spool:
    """The spool folder (module docstring); safe to use from several threads for different
    studies, and from the receiving threads and one processing thread for the same study."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        salt = self.root / "salt"
        if not salt.exists():
            _durable_write(salt, secrets.token_hex(16).encode())
        self.salt = salt.read_text().strip()

    # ------------------------------------------------------------------------------ receiving

    def store(self, study_uid: str, sop_instance_uid: str, encoded: bytes) -> str:
        """Write one received DICOM file (preamble, meta and dataset); returns the study key."""
        study = uid_key(study_uid)
        _durable_write(self.images(study) / f"{uid_key(sop_instance_uid, 24)}.dcm", encoded)
        return study

    def images(self, study: str) -> Path:
        return self.root / study / "images"

    def studies(self) -> list[str]:
        """Keys of the studies in the spool."""
        return sorted(p.parent.name for p in self.root.glob("*/images") if p.is_dir())

    def image_names(self, study: str) -> frozenset[str]:
        folder = self.images(study)
        return frozenset(p.name for p in folder.glob("*.dcm")) if folder.is_dir() else frozenset()

    # ------------------------------------------------------------------------------ rounds

    def remove_interrupted_rounds(self) -> int:
        """Remove the ``<n>.partial`` rounds a killed node left (call before processing);
        returns how many."""
        partial = list(self.root.glob("*/rounds/*.partial"))
        for folder in partial:
            shutil.rmtree(folder)
        return len(partial)

    def last_round(self, study: str) -> Round | None:
        """The latest complete round."""
        rounds = self.root / study / "rounds"
        complete = [f for f in rounds.glob("*") if f.name.isdigit()
                    and (f / "manifest.json").is_file()] if rounds.is_dir() else []  # fmt: skip
        if not complete:
            return None
        folder = max(complete, key=lambda f: int(f.name))
        manifest = json.loads((folder / "manifest.json").read_text())
        return Round(folder, frozenset(manifest["images"]), tuple(manifest["results"]),
                     tuple(manifest["problems"]))  # fmt: skip

    def begin_round(self, study: str) -> tuple[Path, frozenset[str]]:
        """A new ``<n>.partial`` round folder whose ``input/`` links the study's images now;
        returns (folder, image names)."""
        last = self.last_round(study)
        number = int(last.folder.name) + 1 if last else 1
        folder = self.root / study / "rounds" / f"{number}.partial"
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "input").mkdir(parents=True)
        (folder / "results").mkdir()
        names = self.image_names(study)
        for name in names:
            os.link(self.images(study) / name, folder / "input" / name)
        return folder, names

    def finish_round(self, folder: Path, images: frozenset[str], problems: list[str]) -> Round:
        """Write the manifest and rename the round into place (it is complete from now on)."""
        results = tuple(sorted(p.name for p in (folder / "results").glob("*.dcm")))
        manifest = {"images": sorted(images), "results": list(results), "problems": problems}
        for path in (folder / "results").glob("*.dcm"):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        _durable_write(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
        done = folder.with_name(folder.name.removesuffix(".partial"))
        os.replace(folder, done)
        _fsync_folder(done.parent)
        return Round(done, images, results, tuple(problems))

    # ------------------------------------------------------------------------------ sending

    def sent(self, study: str) -> set[str]:
        """Result names the destination has acknowledged."""
        log = self.root / study / "sent.log"
        return set(log.read_text().split()) if log.exists() else set()

    def mark_sent(self, study: str, name: str) -> None:
        with open(self.root / study / "sent.log", "a") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())

    def unsent(self, study: str) -> list[str]:
        """Results of the last round not yet acknowledged."""
        last = self.last_round(study)
        if last is None:
            return []
        sent = self.sent(study)
        return [name for name in last.results if name not in sent]

    def needs_round(self, study: str) -> bool:
        last = self.last_round(study)
        images = self.image_names(study)
        return bool(images) and (last is None or last.images != images)
