"""Which exported model is deployed under a name, and every model it replaced (``index.json``).

An artifacts directory (``paths.artifacts_dir``; by default ``<repository>/artifacts``)::

    aif_resunet3cs.ts               the deployed file of the name ``aif_resunet3cs``: a copy of
                                    its promoted version, at the stable path configs and scanners
                                    use
    aif_resunet3cs.onnx             its ONNX twin, when the promoted export has one
    versions/aif_resunet3cs.v1.ts   every version ever deployed, never overwritten or removed
    index.json                      per name: the versions, the deployed one, every promotion
    .index.lock                     held (``flock``) by whoever changes the index

``index.json``::

    {"format": "inline-cmr/artifact-index/1",
     "artifacts": {"aif_resunet3cs": {
         "deployed": 2,
         "versions": [{"version": 1, "file": "versions/aif_resunet3cs.v1.ts", "sha256": ...,
                       "weights_sha256": ..., "task": ..., "model": ..., "precision": ...,
                       "created_utc": ..., "added_utc": ..., "source_run": ..., "source_file": ...,
                       "source_checkpoint": ..., "test_metrics": {...}, "optimized_metric": ...,
                       "exporting_cpu": {"model": ..., "capability": ..., "features": [...]}}, ...],
         "promotions": [{"version": 1, "promoted_utc": ..., "reason": "training run"}, ...]}}}

A stable path changes only through :meth:`ArtifactIndex.promote` (a real training run's export,
a sweep's stated rule, or ``python -m exports promote``) and :meth:`ArtifactIndex.promote_version`
(a roll back): the file is stored as the next version, unless that exact file is a version
already, the index is rewritten, and only then is the stable path replaced. Each step is an atomic
write (:func:`formats.atomic_file.atomic_write`), so a process killed at any point leaves the old
or the new index, never half of one; a name resolves through the index, so it gives the promoted
model even if the kill came before the stable copy (the next promotion repairs that copy). A
stable file the index does not know (copied there by hand, or from before the index) is stored as
a version before anything replaces it.

Names: ``aif_resunet3cs`` resolves to the deployed version's file, ``aif_resunet3cs@1`` to
version 1 (:func:`resolve_artifact`; ``load_artifact`` accepts names this way). Without an
explicit directory, names are looked up in ``$INLINE_CMR_ARTIFACTS`` or ``<repository>/artifacts``.

Standard library and :mod:`deployment.artifact` only: the scanner side resolves names without any
training code.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployment.artifact_file import ArtifactError, read_metadata, weights_sha256
from formats.atomic_file import atomic_write

__all__ = [
    "ARTIFACTS_DIR_ENV",
    "INDEX_FORMAT",
    "INDEX_NAME",
    "ArtifactIndex",
    "ArtifactIndexError",
    "ArtifactVersion",
    "default_artifacts_dir",
    "export_record",
    "file_sha256",
    "find_run_export",
    "parse_artifact_name",
    "resolve_artifact",
]

INDEX_NAME = "index.json"
INDEX_FORMAT = "inline-cmr/artifact-index/1"
VERSIONS_DIR = "versions"
LOCK_NAME = ".index.lock"
TWIN_SUFFIXES = (".onnx",)
"""Files that travel with an artifact: ``<stem>.onnx`` beside ``<stem>.ts``."""

_VERSION_KEYS = ("version", "file", "sha256")

ARTIFACTS_DIR_ENV = "INLINE_CMR_ARTIFACTS"
"""Environment variable naming the artifacts directory where names are looked up."""

_NAME = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:@(?P<version>[0-9]+))?")
_FILE_SUFFIXES = (".ts", ".onnx", ".pt", ".ckpt", ".pth")


class ArtifactIndexError(ArtifactError):
    """The index, a name or a promotion is unusable; the message names the file and the cause."""


def default_artifacts_dir() -> Path:
    """``$INLINE_CMR_ARTIFACTS``, else ``artifacts/`` of this repository (where training
    writes: ``paths.artifacts_dir``)."""
    env = os.environ.get(ARTIFACTS_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "artifacts"


def parse_artifact_name(spec: str) -> tuple[str, int | None] | None:
    """``(name, version)`` of ``NAME`` or ``NAME@VERSION``; ``None`` for anything path-like.

    Example:
        >>> parse_artifact_name("aif_resunet3cs@2"), parse_artifact_name("aif_resunet3cs")
        (('aif_resunet3cs', 2), ('aif_resunet3cs', None))
        >>> parse_artifact_name("artifacts/aif_resunet3cs.ts") is None
        True
    """
    match = _NAME.fullmatch(spec)
    if match is None or match["name"].lower().endswith(_FILE_SUFFIXES):
        return None
    version = match["version"]
    return match["name"], int(version) if version is not None else None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a whole file's bytes."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _source_run(file: Path, metadata: dict[str, Any]) -> Path | None:
    """The run directory an export came from: ``<run>/export/x.ts`` or its checkpoint's run."""
    if file.parent.name == "export":
        return file.parent.parent.resolve()
    checkpoint = metadata.get("source_checkpoint")
    if checkpoint and Path(checkpoint).parent.name == "checkpoints":
        return Path(checkpoint).parent.parent.resolve()
    return None


def export_record(
    file: str | os.PathLike, source_run: str | os.PathLike | None = None
) -> dict[str, Any]:
    """What the index records of one exported file, read from the file and its metadata.

    The file is verified first: its metadata is complete and its recomputed ``weights_sha256``
    matches (``source_run`` defaults to the run directory the file or its checkpoint lies in).

    Raises:
        ArtifactError: the file is missing, damaged or not an exported model.
    """
    file = Path(file)
    metadata = read_metadata(file)
    data = file.read_bytes()
    if weights_sha256(data, file) != metadata["weights_sha256"]:
        raise ArtifactError(
            f"{file}: weights sha256 differs from the exported {metadata['weights_sha256']}; the "
            "file was changed after export, refusing to record it"
        )
    run = Path(source_run).resolve() if source_run else _source_run(file, metadata)
    config = metadata.get("config") or {}
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "weights_sha256": metadata["weights_sha256"],
        "task": metadata["task"],
        "model": metadata["model"],
        "precision": metadata.get("precision", "fp32"),
        "created_utc": metadata["created_utc"],
        "source_run": str(run) if run else None,
        "source_file": str(file.resolve()),
        "source_checkpoint": metadata["source_checkpoint"],
        "test_metrics": metadata["test_metrics"],
        "optimized_metric": config.get("optimized_metric") if isinstance(config, dict) else None,
        "exporting_cpu": metadata.get("exporting_cpu"),
        "check_run": list(metadata.get("check_run") or []),
    }


@dataclass(frozen=True)
class ArtifactVersion:
    """One stored version of a name, as listed in the index.

    Attributes:
        name: the deployed name (the stable file's stem), e.g. ``aif_resunet3cs``.
        version: 1, 2, ... in the order they were stored.
        path: the stored file, ``<artifacts>/versions/<name>.v<version>.ts``.
        record: the index entry (sha256, task, model, created_utc, source_run, test_metrics,
            exporting_cpu, ...; see the module docstring).
        deployed: this is the version the name resolves to.
    """

    name: str
    version: int
    path: Path
    record: dict[str, Any]
    deployed: bool

    @property
    def label(self) -> str:
        """``name@version``, the form ``promote`` and ``load_artifact`` accept."""
        return f"{self.name}@{self.version}"


def find_run_export(run_dir: str | os.PathLike, name: str | None = None) -> Path:
    """The exported ``.ts`` of a run: ``<run_dir>/export/<name>.ts`` (or ``<run_dir>/*.ts``).

    Raises:
        ArtifactIndexError: none, or several and no ``name`` to choose (the message lists them).
    """
    run_dir = Path(run_dir)
    folder = run_dir / "export" if (run_dir / "export").is_dir() else run_dir
    found = sorted(p for p in folder.glob("*.ts") if name is None or p.stem == name)
    if len(found) == 1:
        return found[0]
    if not found:
        wanted = f"{name}.ts" if name else "a .ts file"
        raise ArtifactIndexError(f"{run_dir}: no exported model ({wanted}) in {folder}")
    raise ArtifactIndexError(
        f"{run_dir}: several exported models ({', '.join(p.name for p in found)}); "
        "choose one with --name"
    )


class ArtifactIndex:
    """The versions and deployments of one artifacts directory (module docstring).

    Example:
        >>> import tempfile
        >>> index = ArtifactIndex(tempfile.mkdtemp())
        >>> index.names()
        []
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        """``<directory>/index.json``."""
        return self.directory / INDEX_NAME

    def stable_path(self, name: str) -> Path:
        """The deployed file of ``name``: ``<directory>/<name>.ts``."""
        return self.directory / f"{name}.ts"

    # ---------------------------------------------------------------------------- reading

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"format": INDEX_FORMAT, "artifacts": {}}
        try:
            state = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactIndexError(f"{self.path}: not a readable index ({exc})") from exc
        if not isinstance(state, dict) or state.get("format") != INDEX_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ArtifactIndexError(f"{self.path}: format {found!r}, expected {INDEX_FORMAT!r}")
        if not isinstance(state.get("artifacts"), dict):
            raise ArtifactIndexError(f"{self.path}: key 'artifacts': expected an object")
        for name, entry in state["artifacts"].items():
            versions = entry.get("versions") if isinstance(entry, dict) else None
            if not isinstance(versions, list) or not isinstance(entry.get("promotions"), list):
                raise ArtifactIndexError(
                    f"{self.path}: artifact {name!r}: expected 'versions' and 'promotions' lists"
                )
            for record in versions:
                if not isinstance(record, dict) or not all(k in record for k in _VERSION_KEYS):
                    raise ArtifactIndexError(
                        f"{self.path}: artifact {name!r}: expected versions with keys "
                        f"{list(_VERSION_KEYS)}; found {record!r:.200}"
                    )
        return state

    def names(self) -> list[str]:
        """The names with at least one stored version, sorted."""
        return sorted(self._read()["artifacts"])

    def _version(self, name: str, entry: dict[str, Any], record: dict[str, Any]) -> ArtifactVersion:
        number = int(record["version"])
        deployed = entry.get("deployed") == number
        return ArtifactVersion(name, number, self.directory / record["file"], record, deployed)

    def versions(self, name: str) -> list[ArtifactVersion]:
        """Every stored version of ``name``, oldest first (empty for an unknown name)."""
        entry = self._read()["artifacts"].get(name) or {"versions": []}
        return [self._version(name, entry, record) for record in entry["versions"]]

    def promotions(self, name: str) -> list[dict[str, Any]]:
        """Every promotion of ``name``, oldest first: ``version``, ``promoted_utc``, ``reason``."""
        return list((self._read()["artifacts"].get(name) or {}).get("promotions", []))

    def version(self, name: str, version: int | None = None) -> ArtifactVersion:
        """Version ``version`` of ``name``, or the deployed one.

        Raises:
            ArtifactIndexError: unknown name or version, or its stored file is missing.
        """
        entry = self._read()["artifacts"].get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none"
            raise ArtifactIndexError(
                f"{self.path}: no artifact named {name!r} (known names: {known}); give a path to "
                "a .ts file, or deploy one with `python -m exports promote <run dir or .ts>`"
            )
        number = version if version is not None else entry.get("deployed")
        records = [r for r in entry["versions"] if r["version"] == number]
        if not records:
            have = ", ".join(f"{name}@{r['version']}" for r in entry["versions"])
            raise ArtifactIndexError(f"{self.path}: {name!r} has no version {number} ({have})")
        found = self._version(name, entry, records[0])
        if not found.path.is_file():
            raise ArtifactIndexError(
                f"{self.path}: {found.label} is stored as {found.path}, which is missing"
            )
        return found

    def deployed_matches_stable(self, name: str) -> bool:
        """Whether the stable file holds the deployed version (false only after a kill between
        the index and the stable copy, or a hand edit; the next promotion repairs it)."""
        stable = self.stable_path(name)
        deployed = self.version(name)
        return stable.is_file() and file_sha256(stable) == deployed.record["sha256"]

    # ---------------------------------------------------------------------------- changing

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``.index.lock``: one writer at a time (training runs, sweeps, ``promote``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            yield

    def _write(self, state: dict[str, Any]) -> None:
        with atomic_write(self.path) as tmp:
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")

    def _next_number(self, name: str, entry: dict[str, Any]) -> int:
        numbers = [int(r["version"]) for r in entry["versions"]]
        for stored in (self.directory / VERSIONS_DIR).glob(f"{name}.v*.ts"):
            suffix = stored.name[len(name) + 2 : -3]
            numbers += [int(suffix)] if suffix.isdigit() else []  # incl. files of killed runs
        return max(numbers, default=0) + 1

    def _store(
        self, name: str, entry: dict[str, Any], source: Path, record: dict[str, Any]
    ) -> dict[str, Any]:
        """Copy ``source`` (and its twins) in as the next version; returns its index record."""
        number = self._next_number(name, entry)
        target = self.directory / VERSIONS_DIR / f"{name}.v{number}.ts"
        _copy_with_twins(source, target)
        record = {
            **record,
            "version": number,
            "file": target.relative_to(self.directory).as_posix(),
            "added_utc": _utc_now(),
        }
        entry["versions"].append(record)
        return record

    def _keep_unknown_stable_file(self, name: str, entry: dict[str, Any]) -> None:
        """A stable file that is no stored version (hand-copied, pre-index) becomes one."""
        stable = self.stable_path(name)
        if not stable.is_file():
            return
        sha = file_sha256(stable)
        if any(r["sha256"] == sha for r in entry["versions"]):
            return
        try:
            record = export_record(stable, source_run=None)
        except ArtifactError as exc:  # kept all the same: nothing is lost
            record = {"sha256": sha, "source_file": str(stable), "note": str(exc)}
        record["origin"] = "found at the stable path, not in the index"
        self._store(name, entry, stable, record)

    def _name_storing(self, sha256: str) -> str | None:
        """The first name with a stored version of exactly these bytes, if any."""
        artifacts = self._read()["artifacts"]
        found = [
            n for n, e in artifacts.items() if any(r["sha256"] == sha256 for r in e["versions"])
        ]
        return min(found, default=None)

    @staticmethod
    def _deploy(entry: dict[str, Any], record: dict[str, Any], reason: str) -> None:
        entry["deployed"] = record["version"]
        entry["promotions"].append(
            {"version": record["version"], "promoted_utc": _utc_now(), "reason": reason}
        )

    def _install(self, name: str) -> ArtifactVersion:
        """Copy the deployed version (and its twins) to the stable path."""
        deployed = self.version(name)
        _copy_with_twins(deployed.path, self.stable_path(name), remove_missing_twins=True)
        return deployed

    def promote(
        self,
        file: str | os.PathLike,
        name: str | None = None,
        reason: str = "promote",
        source_run: str | os.PathLike | None = None,
        allow_check_run: bool = False,
    ) -> ArtifactVersion:
        """Deploy an exported file under ``name`` (default: the name that stores this very file
        already, e.g. for ``versions/<name>.v1.ts``, else the file's stem).

        Stores it as the next version (an identical file already stored is reused: the name
        rolls back or forward to it), records the promotion with ``reason``, then replaces the
        stable file. Returns the deployed version. An export of a check run (metadata
        ``check_run``: ``fast_dev_run``, ``debug=*``, ...) is refused unless ``allow_check_run``.

        Raises:
            ArtifactError: the file is missing, damaged, not an exported model, or from a check
                run.
        """
        file = Path(file)
        record = export_record(file, source_run)
        name = name or self._name_storing(record["sha256"]) or file.stem
        if parse_artifact_name(name) is None or "@" in name:
            raise ArtifactIndexError(
                f"{name!r}: not a usable artifact name (letters, digits, "
                "'_', '-', '.'; no file suffix)"
            )
        if record["check_run"] and not allow_check_run:
            raise ArtifactIndexError(
                f"{file}: exported by a check run ({', '.join(record['check_run'])}), not a "
                "training; refusing to deploy it (allow_check_run / --allow-check-run to insist)"
            )
        with self._locked():
            state = self._read()
            entry = state["artifacts"].setdefault(name, {"versions": [], "promotions": []})
            self._keep_unknown_stable_file(name, entry)
            same = [r for r in entry["versions"] if r["sha256"] == record["sha256"]]
            stored = same[0] if same else self._store(name, entry, file, record)
            self._deploy(entry, stored, reason)
            self._write(state)
            return self._install(name)

    def promote_version(
        self, name: str, version: int, reason: str = "roll back"
    ) -> ArtifactVersion:
        """Deploy a stored version again (a roll back, or forward); returns it.

        Raises:
            ArtifactIndexError: unknown name or version.
        """
        with self._locked():
            target = self.version(name, version)
            state = self._read()
            entry = state["artifacts"][name]
            self._keep_unknown_stable_file(name, entry)
            self._deploy(entry, target.record, reason)
            self._write(state)
            return self._install(name)

    def rollback(self, name: str) -> ArtifactVersion:
        """Deploy again the version ``name`` had before its current one (``rollback NAME``): the
        last promotion of another version. A second roll back returns to where the first started
        (like ``cd -``); ``promote NAME@VERSION`` goes to any stored version.

        Raises:
            ArtifactIndexError: unknown name, or no earlier deployed version to go back to.
        """
        current = self.version(name).version
        earlier = [p["version"] for p in self.promotions(name) if p["version"] != current]
        if not earlier:
            raise ArtifactIndexError(
                f"{self.path}: {name}@{current} is the only version ever deployed; nothing to "
                "roll back to"
            )
        return self.promote_version(name, earlier[-1], f"roll back from {name}@{current}")

    def promote_target(
        self,
        target: str,
        name: str | None = None,
        reason: str | None = None,
        allow_check_run: bool = False,
    ) -> ArtifactVersion:
        """What ``python -m exports promote TARGET`` deploys: a run directory (its
        ``export/<name>.ts``), an exported ``.ts`` file, or ``NAME@VERSION`` (a stored version).

        Raises:
            ArtifactIndexError: the target is none of these (the message says which were tried).
        """
        path = Path(target)
        if path.is_dir() or path.is_file():
            file = find_run_export(path, name) if path.is_dir() else path
            reason = reason or f"promote {path}"
            return self.promote(file, name, reason, allow_check_run=allow_check_run)
        parsed = parse_artifact_name(target)
        if parsed is not None and parsed[1] is not None:
            return self.promote_version(parsed[0], parsed[1], reason or f"promote {target}")
        raise ArtifactIndexError(
            f"{target}: not a run directory, an exported .ts file or NAME@VERSION (a version "
            f"listed by `python -m exports list`)"
        )


def _copy_with_twins(source: Path, target: Path, remove_missing_twins: bool = False) -> None:
    """Atomic copies of ``source`` and its twins (``.onnx``) to ``target`` (and its twins)."""
    with atomic_write(target) as tmp:
        shutil.copyfile(source, tmp)
    for suffix in TWIN_SUFFIXES:
        twin, target_twin = source.with_suffix(suffix), target.with_suffix(suffix)
        if twin.is_file():
            with atomic_write(target_twin) as tmp:
                shutil.copyfile(twin, tmp)
        elif remove_missing_twins:  # the replaced version's twin is in versions/ with it
            target_twin.unlink(missing_ok=True)


def resolve_artifact(
    spec: str | os.PathLike, artifacts_dir: str | os.PathLike | None = None
) -> Path:
    """The file ``load_artifact`` reads for a path or a name.

    An existing path, or anything path-like (a folder separator, a ``.ts`` suffix), is returned
    as given. A name (``aif_resunet3cs``, ``aif_resunet3cs@2``) resolves through the index of
    ``artifacts_dir`` (default :func:`default_artifacts_dir`) to the deployed (or the given)
    version's stored file; a name the index does not know falls back to ``<dir>/<name>.ts``
    when that exists (an artifacts directory from before the index).

    Raises:
        ArtifactIndexError: a name that is neither in the index nor a stable file.
    """
    path = Path(spec)
    parsed = parse_artifact_name(str(spec))
    if path.exists() or parsed is None:
        return path
    name, version = parsed
    index = ArtifactIndex(artifacts_dir if artifacts_dir is not None else default_artifacts_dir())
    if version is None and name not in index.names() and index.stable_path(name).is_file():
        return index.stable_path(name)
    return index.version(name, version).path
