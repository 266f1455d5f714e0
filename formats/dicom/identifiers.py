"""Patient identifiers of imported DICOM data: pseudonyms by default, the originals on request.

By default the HDF5 gets ``patient_id = "anon-" + the first 16 hex digits of SHA-256(salt +
PatientID)``, and nothing else that names the patient: no PatientName, PatientBirthDate,
AccessionNumber, StudyDate or InstitutionName. The same salt gives the same pseudonym for the
same PatientID in every import, so patient-level splits stay right across files; without the
salt the pseudonym cannot be traced back by hashing a list of candidate IDs. The salt is
``--salt TEXT`` if given, else a random one created once per user in
``$XDG_CONFIG_HOME/inline-cmr/dicom_id_salt`` (``~/.config/...``; mode 0600).

``--keep-identifiers`` stores ``PatientID`` as it is, plus ``study_date``, ``study_id`` and
``accession_number`` (names and birth dates are never copied). UIDs (study, series, frame of
reference, SOP instances) are always kept: they name no one and let results reference their
source images (``--dicom-out``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

__all__ = ["default_salt_path", "identifier_attrs", "load_or_create_salt", "pseudonym"]


def pseudonym(patient_id: str, salt: str) -> str:
    """Salted SHA-256 pseudonym of a PatientID.

    Example:
        >>> pseudonym("12345678", salt="site-A")
        'anon-0d4660e50a870fd5'
    """
    digest = hashlib.sha256((salt + "\x00" + patient_id).encode("utf-8")).hexdigest()
    return f"anon-{digest[:16]}"


def default_salt_path() -> Path:
    """``$XDG_CONFIG_HOME/inline-cmr/dicom_id_salt`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "inline-cmr" / "dicom_id_salt"


def load_or_create_salt(path: Path | None = None) -> str:
    """The per-user salt, created on first use: 32 random bytes as hex, written to a temporary
    file of mode 0600 that is then renamed (never readable by others, never half-written)."""
    path = path or default_salt_path()
    if path.is_file():
        salt = path.read_text().strip()
        if salt:
            return salt
    salt = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(salt + "\n")
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    return salt


def identifier_attrs(header: Dataset, keep: bool, salt: str) -> dict[str, str]:
    """Case attrs that identify the patient (module docstring): ``patient_id`` always, the kept
    identifiers only with ``keep``."""
    patient_id = str(header.get("PatientID", "")).strip() or "unknown"
    if not keep:
        return {"patient_id": pseudonym(patient_id, salt), "identifiers": "pseudonymised"}
    kept = {
        "patient_id": patient_id,
        "identifiers": "kept",
        "study_date": str(header.get("StudyDate", "")),
        "study_id": str(header.get("StudyID", "")),
        "accession_number": str(header.get("AccessionNumber", "")),
    }
    return {k: v for k, v in kept.items() if v}
