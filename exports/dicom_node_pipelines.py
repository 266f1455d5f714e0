"""One processing round of the DICOM node: a study's received files -> DICOM results.

The same steps as the file-based runtime, with the models loaded once by the node:

1. ``python -m exports dicom-import``'s :func:`formats.dicom.importer.import_dicom` classifies
   every series (AIF, T1 native, T1 post-contrast, T2) and writes the HDF5 contracts;
2. each kind runs through its pipeline, as ``python -m exports aif`` / ``mapping`` do
   (:class:`exports.aif_pipeline.AIFPipeline`, :func:`exports.mapping_cli.run_single` and
   :func:`exports.mapping_cli.run_ecv`); ECV when both T1 kinds are present and a hematocrit is
   known (the case's attr or the node's ``--hematocrit``);
3. the results are written by the runtime's own DICOM writers (:mod:`exports.dicom_output`:
   Segmentation, Parametric Map), and the figure a reader looks at (:mod:`exports.figures`,
   :mod:`exports.mapping_figures`) as a Secondary Capture image in the same study.

Each job (``aif``, ``t1_native``, ``post_contrast``, ``t2``, ``ecv``) writes into its own work
folder; only a job that succeeded entirely moves its files into the round's results (named
``<job>_<runtime's name>.dcm``), so a failing series sends nothing, never half a result. Its
reason is returned as a problem. Identifiers stay in the DICOM results (they are filed with the
patient); the log lines name cases by their pseudonyms only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from exports.dicom_spool import uid_key
from formats.atomic_file import atomic_write
from formats.contract_errors import plain

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from exports.mapping_pipeline import MappingPipeline
    from exports.mrd_session import InlineModels

__all__ = ["FIGURE_SERIES_OFFSET", "NodeModels", "RoundReport", "process_study"]

FIGURE_SERIES_OFFSET = 3000
"""Series number of the figures: source series number + 3000 (Segmentations + 1000, Parametric
Maps + 2000, as :mod:`exports.dicom_output` numbers them)."""


@dataclass
class NodeModels:
    """What the node loaded once (:func:`exports.mrd_server.load_models`: sha256-checked and
    warmed up), the artifacts' paths (their stems name the algorithm in the results), the
    hematocrit for ECV (None: no ECV) and whether figures are sent (about 40 % of a study's
    processing)."""

    loaded: InlineModels
    aif_model: Path | None = None
    myocardium_model: Path | None = None
    hematocrit: float | None = None
    figures: bool = True
    mapping: MappingPipeline = field(init=False)

    def __post_init__(self) -> None:
        from exports.mapping_pipeline import MappingPipeline
        from exports.mapping_settings import MappingSettings

        self.mapping = MappingPipeline(MappingSettings(), self.loaded.myocardium)
        memoise_highdicom_iod_lookups()


@dataclass
class RoundReport:
    """What a round did: log lines (no identifiers), problems (each a failed job's reason),
    and the result files written."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    results: list[Path] = field(default_factory=list)


@dataclass
class _Job:
    """One job's work folder: DICOM written by the runtime's writers, figures as PNG."""

    name: str
    folder: Path
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (PNG, source SOP UID)

    @property
    def dicom(self) -> Path:
        return self.folder / "dicom"

    @property
    def source(self) -> Path:
        """Links to the source files of the job's series (the writers scan only those)."""
        return self.folder / "source"


def memoise_highdicom_iod_lookups() -> None:
    """highdicom asks, for every source image a Segmentation or Parametric Map references,
    whether its IOD has pixel data and allows several frames, by walking the standard's module
    tables (about 7 ms per image; a perfusion Segmentation references 76). The answer depends
    on the attribute and the SOP Class UID only, so ``is_attribute_in_iod`` is memoised (same
    answers) where highdicom looks it up (its standard tables module, and the modules that
    import it by name)."""
    import highdicom._standard_utils as standard
    import highdicom.base
    import highdicom.sr.content

    original = standard.is_attribute_in_iod
    if getattr(original, "memoised", False):
        return

    @functools.lru_cache(maxsize=1024)
    def cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return original(attribute, sop_class_uid, None if exclude is None else list(exclude))

    def is_attribute_in_iod(
        attribute: str, sop_class_uid: str, exclude_path_elements: Any = None
    ) -> bool:
        exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
        return cached(attribute, str(sop_class_uid), exclude)

    is_attribute_in_iod.memoised = True  # type: ignore[attr-defined]
    for module in (standard, highdicom.base, highdicom.sr.content):
        if hasattr(module, "is_attribute_in_iod"):
            module.is_attribute_in_iod = is_attribute_in_iod


def _silently(write: Callable[..., int], *args: Any) -> tuple[int, list[str]]:
    """Run one of the runtime's DICOM writers; (status, its printed lines)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = write(*args)
    return status, printed.getvalue().splitlines()


def _first_uid(h5_path: Path, group: str) -> str:
    with h5py.File(h5_path, "r") as h5:
        return str(plain(h5[group].attrs["sop_instance_uids"])[0])


def _run_aif(models: NodeModels, path: Path, job: _Job) -> list[str]:
    """``python -m exports aif --dicom-out``'s steps; returns the problems."""
    from exports.aif_cli import read_cases
    from exports.aif_pipeline import AIFCase, AIFResult
    from exports.dicom_output import write_aif_dicom
    from exports.figures import plot_case

    pipeline = models.loaded.aif
    if pipeline is None:
        return ["AIF series received but the node has no --aif-model"]
    outcomes, problems = [], []
    for case in read_cases(path):
        outcome = next(pipeline.run_many([case]))
        outcomes.append(outcome)
        if not isinstance(outcome, AIFResult):
            problems.append(f"{outcome.case_id}: {outcome.error}")
        elif models.figures and isinstance(case, AIFCase):
            signal, _ = pipeline.signal_on_grid(case.series, case.times_s, case.n_pd_frames)
            png = plot_case(outcome, signal, job.folder / "figures")
            job.figures.append((png, _first_uid(path, case.case_id)))
    args = argparse.Namespace(dicom_source=job.source, dicom_out=job.dicom, input=path,
                              model=models.aif_model)  # fmt: skip
    status, printed = _silently(write_aif_dicom, args, outcomes, models.loaded.aif_sha256)
    return problems + ([] if status == 0 else [line for line in printed if "FAILED" in line])


def _run_mapping(
    models: NodeModels, outcomes: Iterable[Any], inputs: dict[str, Path], job: _Job
) -> list[str]:
    """``python -m exports mapping --dicom-out``'s steps on the outcomes; returns the problems."""
    from exports.dicom_output import write_mapping_dicom
    from exports.mapping_figures import plot_slice

    problems, done = [], []
    for outcome in outcomes:
        done.append(outcome)
        if not outcome.ok:
            problems.append(f"{outcome.case_id}: {outcome.error}")
            continue
        for result in outcome.slices if models.figures else []:
            if result.success and np.isfinite(result.values).any():
                png = plot_slice(result, job.folder / "figures")
                reference = inputs.get("post", inputs.get("input"))
                uid = _first_uid(reference, f"{result.case_id}/{result.slice_id}")
                job.figures.append((png, uid))
    args = argparse.Namespace(
        dicom_source=job.source, dicom_out=job.dicom, input=inputs.get("input"),
        t1=inputs.get("input"), native=inputs.get("native"), post=inputs.get("post"),
        model=models.myocardium_model,
    )  # fmt: skip
    status, printed = _silently(write_mapping_dicom, args, done, models.loaded.myocardium_sha256)
    return problems + ([] if status == 0 else [line for line in printed if "FAILED" in line])


def figure_image(
    png: Path, source: Dataset, series_uid: str, series_number: int, instance: int, sha: str
) -> Any:
    """A Secondary Capture image (RGB) of a figure, in the study of its source image: made on a
    workstation (ConversionType WSD), no patient orientation (a figure, not a view of the
    patient), the heart unpaired (ImageLaterality U)."""
    import highdicom as hd
    from matplotlib.image import imread

    from formats.dicom.results import software_version

    rgba = imread(png)
    rgb = np.round(rgba[..., :3] * 255).astype(np.uint8)
    image = hd.sc.SCImage.from_ref_dataset(
        source, rgb, "RGB", 8, "PATIENT", series_uid, series_number, hd.UID(), instance,
        manufacturer="inline-cmr", patient_orientation=("L", "F"),
        series_description=f"inline-cmr figure {png.stem.rsplit('_', 1)[-1]}"[:64],
        manufacturer_model_name="inline-cmr dicom-node", software_versions=software_version(),
        device_serial_number=sha[:16] or "0",
    )  # fmt: skip
    image.PatientOrientation = None  # highdicom asks for one; empty (type 2) is the truth here
    image.ConversionType, image.ImageLaterality = "WSD", "U"
    return image


def _write_figures(job: _Job, headers: dict[str, Dataset], sha: str) -> None:
    """Each figure of the job as a Secondary Capture, one output series per source series."""
    from pydicom.uid import generate_uid

    series: dict[str, tuple[str, int, int]] = {}
    for png, uid in job.figures:
        source = headers[uid]
        key = str(source.SeriesInstanceUID)
        number = int(source.get("SeriesNumber") or 0) + FIGURE_SERIES_OFFSET
        series_uid, _, count = series.get(key, (generate_uid(), number, 0))
        series[key] = (series_uid, number, count + 1)
        image = figure_image(png, source, series_uid, number, count + 1, sha)
        with atomic_write(job.dicom / f"{png.stem}_figure.dcm") as tmp:
            image.save_as(tmp, enforce_file_format=True)


def process_study(
    source: Path, work: Path, results: Path, models: NodeModels, salt: str
) -> RoundReport:
    """Import the study's files in ``source``, run every job and put the results of the jobs
    that succeeded into ``results`` (module docstring). ``work`` is a scratch folder."""
    from exports.mapping_cli import run_ecv, run_single
    from formats.dicom.files import DicomImportError, scan_dicom_folder
    from formats.dicom.importer import ImportOptions, import_dicom

    report = RoundReport()
    try:
        imported = import_dicom(source, work / "study.h5", ImportOptions(salt=salt))
    except DicomImportError as exc:
        report.problems.append(f"import: {exc}")
        return report
    report.lines += [line.replace(str(source) + "/", "") for line in imported.lines()]
    kinds = imported.outputs
    jobs: dict[str, Callable[[_Job], list[str]]] = {}
    if "aif" in kinds:
        jobs["aif"] = lambda job: _run_aif(models, kinds["aif"], job)
    for kind, quantity in (("t1_native", "t1"), ("post_contrast", "t1"), ("t2", "t2")):
        if kind in kinds:
            jobs[kind] = lambda job, k=kind, q=quantity: _run_mapping(
                models, run_single(models.mapping, kinds[k], "file", q), {"input": kinds[k]}, job
            )
    if "t1_native" in kinds and "post_contrast" in kinds and models.hematocrit is None:
        report.lines.append("ecv: native and post-contrast T1 received; no --hematocrit, no ECV")
    elif "t1_native" in kinds and "post_contrast" in kinds:
        pair = {"native": kinds["t1_native"], "post": kinds["post_contrast"]}
        jobs["ecv"] = lambda job: _run_mapping(
            models, run_ecv(models.mapping, pair["native"], pair["post"], "file",
                            models.hematocrit), pair, job,
        )  # fmt: skip
    folder = scan_dicom_folder(source)
    headers = {uid: f.header for uid, f in folder.by_sop_instance_uid().items()}
    series_of: dict[str, list[str]] = {}
    for series in imported.series:
        if series.status == "imported":
            series_of.setdefault(series.kind, []).append(series.uid)
    for name, run in jobs.items():
        job = _Job(name, work / name)
        job.dicom.mkdir(parents=True)
        kinds_used = ("t1_native", "post_contrast") if name == "ecv" else (name,)
        job.source.mkdir()
        for uid in (uid for kind in kinds_used for uid in series_of.get(kind, [])):
            for k, f in enumerate(folder.series[uid]):
                os.link(f.path, job.source / f"{uid_key(uid)}_{k}.dcm")
        try:
            problems = run(job)
            if not problems:
                loaded = models.loaded
                sha = loaded.aif_sha256 if name == "aif" else loaded.myocardium_sha256
                _write_figures(job, headers, sha)
        except Exception as exc:  # noqa: BLE001 - any failure of one job must not stop the others
            problems = [f"{type(exc).__name__}: {exc}"]
        if problems:
            report.problems += [f"{name}: {p} (nothing of {name} sent)" for p in problems]
            continue
        written = sorted(job.dicom.glob("*.dcm"))
        for path in written:
            target = results / f"{name}_{path.name}"
            shutil.move(path, target)
            report.results.append(target)
        report.lines.append(f"{name}: {len(written)} result file(s)")
    return report
