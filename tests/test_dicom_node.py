"""The DICOM node (``python -m exports dicom-node``) with real peers over 127.0.0.1.

A phantom patient's scanner export (GE perfusion AIF, Siemens MOLLI native, Philips MOLLI
post-contrast, Siemens T2-prep in JPEG lossless; tests/dicom/vendor_dicom.py) is sent to the node
by pynetdicom's SCU, by Orthanc (REST ``modalities/{id}/store``) and by DCMTK's ``storescu``; the
results come back by C-STORE to a pynetdicom SCP, to Orthanc and to DCMTK's ``storescp``. The
Orthanc and DCMTK tests skip where the Debian packages ``orthanc``, ``dcmtk`` and ``dicom3tools``
are absent (.ci/run installs them).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from pynetdicom import AE, evt

from exports.dicom_node import DicomNode, NodeSettings
from exports.dicom_node_pipelines import NodeModels
from exports.dicom_node_sender import Destination, StoreSender
from exports.dicom_spool import Spool
from exports.mrd_server import load_models
from tests.dicom.conftest import run_cli
from tests.dicom.vendor_dicom import PhantomStudy, write_phantom_study
from tests.mrd_cases import BolusTiming
from tests.test_mapping_runtime import _RingModel, export_myocardium_model

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180.0
HEMATOCRIT = 0.42
SEG, PM, SC = (
    "1.2.840.10008.5.1.4.1.1.66.4",
    "1.2.840.10008.5.1.4.1.1.30",
    "1.2.840.10008.5.1.4.1.1.7",
)
RESULT_CLASSES = (SEG, PM, SC)
# the full study: AIF (LV/RV SEG + figure), T1 native, T1 post, T2, ECV (PM + SEG + figure each)
FULL_STUDY = Counter({SEG: 5, PM: 4, SC: 5})


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    return write_phantom_study(tmp_path_factory.mktemp("scanner_export"))


def export_stand_in_models(study: PhantomStudy, folder: Path) -> dict[str, Path]:
    """Stand-in models exported for real: the bolus-timing AIF model of the MRD server tests
    and a myocardium model that always answers the phantom's myocardial ring."""
    import warnings

    from deployment.exporter import export_artifact
    from quantification.aif_preprocessing import AIFPreprocessing, preprocess_aif_series

    folder.mkdir(parents=True, exist_ok=True)
    scan = study.aif
    image = preprocess_aif_series(scan.series, scan.times_s, scan.n_pd_frames).image[None]
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "bolustiming"}
    export_artifact(BolusTiming().eval(), 3, torch.from_numpy(np.repeat(image, 2, 0)),
                    folder / "aif.ts", meta)  # fmt: skip
    mask = study.acquisitions["t1_native"].masks[0].astype(np.float32)
    ring = F.interpolate(torch.from_numpy(mask)[None, None], size=(256, 256), mode="bilinear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script / save
        export_myocardium_model(_RingModel(ring[0]), folder / "myo.ts")
    return {"aif": folder / "aif.ts", "myocardium": folder / "myo.ts"}


@pytest.fixture(scope="module")
def model_paths(study: PhantomStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_stand_in_models(study, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def models(model_paths: dict[str, Path]) -> NodeModels:
    loaded = load_models(model_paths["aif"], model_paths["myocardium"])
    return NodeModels(loaded, model_paths["aif"], model_paths["myocardium"], HEMATOCRIT)


def dicom_files(study: PhantomStudy) -> list[Path]:
    return [p for series in study.files.values() for p in series]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(done: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------ peers


class Receiver:
    """A pynetdicom Storage SCP keeping every dataset it stored (a PACS in miniature);
    ``on_store(count)`` runs before each is kept and may refuse it by returning a status."""

    def __init__(self, on_store: Callable[[int], int | None] | None = None) -> None:
        self.received: list[pydicom.Dataset] = []
        self.on_store = on_store
        ae = AE(ae_title="RESULTS")
        for sop_class in RESULT_CLASSES:
            ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])  # fmt: skip
        self.port = self.server.server_address[1]

    def _store(self, event) -> int:
        if self.on_store is not None and (refused := self.on_store(len(self.received))):
            return refused
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def classes(self) -> Counter:
        return Counter(str(ds.SOPClassUID) for ds in self.received)

    def stop(self) -> None:
        self.server.shutdown()


def send_files(port: int, files: list[Path], calling_ae: str = "SCANNER") -> list[int]:
    """pynetdicom's SCU sends ``files`` in their own transfer syntax; the statuses."""
    ae = AE(ae_title=calling_ae)
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for p in files}  # fmt: skip
    for syntax in syntaxes:
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="INLINECMR")
    assert assoc.is_established, "the node refused the association"
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


@contextmanager
def running_node(
    spool: Path, models: NodeModels, receiver_port: int, accept_ae: tuple[str, ...] = ("SCANNER",),
    accept_hosts: tuple[str, ...] = ("127.0.0.1",),
) -> Iterator[tuple[DicomNode, int]]:  # fmt: skip
    settings = NodeSettings("INLINECMR", "127.0.0.1", 0, accept_ae, accept_hosts, 0.5)
    sender = StoreSender(Destination("127.0.0.1", receiver_port, "RESULTS"), "INLINECMR")
    node = DicomNode(settings, Spool(spool), models, sender)
    _, port = node.start()
    try:
        yield node, port
    finally:
        node.stop()


def file_based_results(study: PhantomStudy, model_paths: dict[str, Path], out: Path) -> Path:
    """The same study through ``dicom-import`` and ``mapping --dicom-out`` (the file-based
    runtime); returns the folder of its DICOM results."""
    status, printed = run_cli(["dicom-import", study.root, "--output", out / "study.h5"])
    assert status == 0, printed
    h5 = {k: out / f"study_{k}.h5" for k in ("t1_native", "post_contrast", "t2")}
    common = ["--model", model_paths["myocardium"], "--dicom-source", study.root]
    for name, inputs in (("t1_native", ["--t1", h5["t1_native"]]),
                         ("post_contrast", ["--t1", h5["post_contrast"]]),
                         ("t2", ["--input", h5["t2"]]),
                         ("ecv", ["--native", h5["t1_native"], "--post", h5["post_contrast"],
                                  "--hematocrit", HEMATOCRIT])):  # fmt: skip
        status, printed = run_cli(["mapping", *inputs, "--output", out / f"{name}.h5",
                                   "--dicom-out", out / name, *common])  # fmt: skip
        assert status == 0, printed
    return out


def map_values(pm: pydicom.Dataset) -> np.ndarray:
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    stored = pm.pixel_array.astype(np.float64)
    return np.where(stored > 0, stored * mapping.RealWorldValueSlope, np.nan)


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


# ------------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def round_trip(study, models, tmp_path_factory):
    """The whole study sent by pynetdicom's SCU; (receiver, node log lines, C-STORE statuses,
    C-ECHO status, spool)."""
    spool = tmp_path_factory.mktemp("spool")
    receiver = Receiver()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("exports.dicom_node").addHandler(handler)
    logging.getLogger("exports.dicom_node").setLevel(logging.INFO)
    try:
        with running_node(spool, models, receiver.port) as (_, port):
            echo = AE(ae_title="SCANNER")
            echo.add_requested_context("1.2.840.10008.1.1")
            assoc = echo.associate("127.0.0.1", port, ae_title="INLINECMR")
            echo_status = int(assoc.send_c_echo().Status)
            assoc.release()
            statuses = send_files(port, dicom_files(study))
            wait_for(lambda: receiver.classes() == FULL_STUDY, "the results")
            wait_for(lambda: any("sent 14 of 14" in r for r in records), "the node's log")
    finally:
        logging.getLogger("exports.dicom_node").removeHandler(handler)
        receiver.stop()
    return receiver, records, statuses, echo_status, spool


def test_a_study_comes_back_as_segmentations_parametric_maps_and_figures(round_trip, study):
    receiver, _, statuses, echo_status, _ = round_trip
    assert echo_status == 0 and statuses == [0] * len(dicom_files(study))
    assert receiver.classes() == FULL_STUDY
    source = pydicom.dcmread(study.files[5][0], stop_before_pixels=True)
    for ds in receiver.received:  # filed with the patient and study they came from
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (ds.PatientID, ds.PatientName) == (source.PatientID, source.PatientName)
    maps = [
        hd.pm.ParametricMap.from_dataset(ds) for ds in receiver.received if ds.SOPClassUID == PM
    ]
    labels = sorted(pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].LUTLabel
                    for pm in maps)  # fmt: skip
    assert labels == ["ECV", "T1", "T1", "T2"]
    segs = [
        hd.seg.Segmentation.from_dataset(ds) for ds in receiver.received if ds.SOPClassUID == SEG
    ]
    segments = sorted(s.get_segment_description(n).segment_label
                      for s in segs for n in s.segment_numbers)  # fmt: skip
    assert segments.count("Myocardium") == 4 and "LV blood pool" in segments
    figures = [ds for ds in receiver.received if ds.SOPClassUID == SC]
    assert all(ds.PhotometricInterpretation == "RGB" and ds.Rows > 200 for ds in figures)


def test_values_equal_the_file_based_runtimes(round_trip, study, model_paths, tmp_path):
    receiver, *_ = round_trip
    expected = file_based_results(study, model_paths, tmp_path)
    for name, description in (("t1_native", "MOLLI"), ("post_contrast", "T1map_SAX post"),
                              ("t2", "T2map_SAX"), ("ecv", "T1map_SAX post")):  # fmt: skip
        (path,) = (expected / name).glob("*_ms.dcm") if name != "ecv" else (
            expected / name).glob("*_ecv_percent.dcm")  # fmt: skip
        reference = pydicom.dcmread(path)
        label = reference.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        same_series = [
            ds for ds in receiver.received if ds.SOPClassUID == PM
            and ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].LUTLabel
            == label.LUTLabel and ds.SeriesNumber == reference.SeriesNumber
        ]  # fmt: skip
        assert len(same_series) == 1, (name, description)
        np.testing.assert_array_equal(same_series[0].pixel_array, reference.pixel_array)


def test_identifiers_are_never_logged(round_trip, study):
    _, records, *_ = round_trip
    text = "\n".join(records)
    assert "round 1: 108 image(s) -> 14 result(s)" in text
    for secret in (study.study.patient_id, "Doe", study.study.study_uid, "ACC42"):
        assert secret not in text


def test_unknown_calling_ae_and_unknown_address_are_refused(models, tmp_path):
    with running_node(tmp_path / "spool", models, free_port(),
                      accept_hosts=("10.255.255.1",)) as (_, port):  # fmt: skip
        assoc = AE(ae_title="SCANNER")
        assoc.add_requested_context("1.2.840.10008.1.1")
        refused = assoc.associate("127.0.0.1", port, ae_title="INLINECMR")
        assert not refused.is_established and not refused.is_rejected  # closed: wrong address
    with running_node(tmp_path / "spool", models, free_port()) as (_, port):
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context("1.2.840.10008.1.1")
        rejected = stranger.associate("127.0.0.1", port, ae_title="INLINECMR")
        assert rejected.is_rejected
        assert rejected.acceptor.primitive.diagnostic == 3  # calling AE title not recognised
    assert not list((tmp_path / "spool").glob("*/images/*"))


def test_a_failing_series_sends_nothing_of_itself_and_the_rest_goes(study, model_paths, tmp_path):
    no_aif = NodeModels(load_models(None, model_paths["myocardium"]), None,
                        model_paths["myocardium"], figures=False)  # fmt: skip
    receiver = Receiver()
    try:
        with running_node(tmp_path / "spool", no_aif, receiver.port) as (node, port):
            t2_and_aif = study.files[3] + study.files[9]
            assert send_files(port, t2_and_aif) == [0] * len(t2_and_aif)
            wait_for(lambda: len(receiver.received) == 2, "the T2 results")
            (study_key,) = node.spool.studies()
            wait_for(lambda: node.spool.last_round(study_key) is not None, "the round")
            problems = node.spool.last_round(study_key).problems
    finally:
        receiver.stop()
    assert receiver.classes() == Counter({SEG: 1, PM: 1})  # T2 only, without its figure
    assert problems == ("aif: AIF series received but the node has no --aif-model "
                        "(nothing of aif sent)",)  # fmt: skip


def test_sending_to_an_absent_or_refusing_peer_gives_up_after_the_capped_attempts(
    round_trip, tmp_path
):
    receiver, *_ = round_trip
    result = tmp_path / "seg.dcm"
    next(ds for ds in receiver.received if ds.SOPClassUID == SEG).save_as(
        result, enforce_file_format=True
    )
    sent: list[Path] = []
    absent = StoreSender(Destination("127.0.0.1", free_port(), "NOBODY"), "INLINECMR",
                         max_attempts=2, retry_delay_s=0.05)  # fmt: skip
    assert absent.send("study", [result], sent.append) == [
        f"{absent}: association not reachable or aborted"
    ]
    attempts: list[int] = []
    refusing = Receiver(on_store=lambda count: attempts.append(count) or 0xA700)
    try:
        sender = StoreSender(Destination("127.0.0.1", refusing.port, "RESULTS"), "INLINECMR",
                             max_attempts=3, retry_delay_s=0.05)  # fmt: skip
        problems = sender.send("study", [result], sent.append)
    finally:
        refusing.stop()
    assert problems == [f"{sender}: seg.dcm: status 0xA700"] and len(attempts) == 3
    assert not sent


def test_an_interrupted_round_is_done_again(study, tmp_path):
    spool = Spool(tmp_path / "spool")
    for path in study.files[9]:
        ds = pydicom.dcmread(path)
        spool.store(ds.StudyInstanceUID, ds.SOPInstanceUID, path.read_bytes())
    (key,) = spool.studies()
    folder, images = spool.begin_round(key)  # the node dies here, mid-round
    assert len(images) == 9 and spool.needs_round(key)
    restarted = Spool(tmp_path / "spool")
    assert restarted.salt == spool.salt and restarted.remove_interrupted_rounds() == 1
    assert not folder.exists() and restarted.needs_round(key)
    done = restarted.finish_round(restarted.begin_round(key)[0], images, [])
    assert done.folder.name == "1" and not restarted.needs_round(key)


# ------------------------------------------------------------------------------------ the node
#                                                       as a process: killed and restarted


@contextmanager
def node_process(args: list) -> Iterator[tuple[subprocess.Popen, int]]:
    """``python -m exports dicom-node ARGS --port <free>``; (process, port) once listening."""
    port = free_port()
    command = [sys.executable, "-m", "exports", "dicom-node", *map(str, args), "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("listening on") for line in lines)
                 or process.poll() is not None, "the node to listen", 120)  # fmt: skip
        assert process.poll() is None, "".join(lines)
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        reader.join(timeout=10)
        process.log = "".join(lines)  # type: ignore[attr-defined]


def test_a_node_killed_mid_study_finishes_it_after_restart_nothing_lost_or_sent_twice(
    study, model_paths, tmp_path
):
    kill_at: dict[str, subprocess.Popen] = {}

    def on_store(count: int) -> int | None:
        if count == 1 and "node" in kill_at:  # the 2nd result: kill the node before answering
            kill_at.pop("node").kill()
            return 0xA700
        return None

    receiver = Receiver(on_store)
    spool = tmp_path / "spool"
    args = ["--spool", spool, "--myocardium-model", model_paths["myocardium"], "--send-to",
            f"127.0.0.1:{receiver.port}:RESULTS", "--accept-ae", "SCANNER", "--accept-host",
            "127.0.0.1"]  # fmt: skip
    native, t2 = study.files[5], study.files[9]
    try:
        # 1. half the study arrives, then the node dies before the study is quiet
        with node_process([*args, "--quiet-time-s", 600]) as (process, port):
            assert send_files(port, native[:6]) == [0] * 6
            process.kill()
        # 2. restarted, it gets the rest, processes, and dies after the first result was sent
        with node_process([*args, "--quiet-time-s", 1]) as (process, port):
            kill_at["node"] = process
            assert send_files(port, native[6:] + t2) == [0] * 14
            process.wait(timeout=TIMEOUT_S)
        assert len(receiver.received) == 1
        # 3. restarted again, it sends what is left
        with node_process([*args, "--quiet-time-s", 1]) as (process, port):
            wait_for(lambda: len(receiver.received) == 6, "the remaining results")
            time.sleep(1)  # anything sent twice would arrive now
    finally:
        receiver.stop()
    uids = Counter(str(ds.SOPInstanceUID) for ds in receiver.received)
    assert len(uids) == 6 and set(uids.values()) == {1}
    assert receiver.classes() == Counter({SEG: 2, PM: 2, SC: 2})  # T1 native and T2
    (key,) = Spool(spool).studies()
    assert len(Spool(spool).image_names(key)) == 20
    assert "1 unfinished stud(ies) taken up" in process.log
    assert "sent 5 of 5" in process.log


# ------------------------------------------------------------------------------------ Orthanc


def dcmtk_tool(name: str) -> str | None:
    """DCMTK's ``name`` on the PATH (pynetdicom installs Python programs of the same names)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which(name, path=folder)
        if candidate is not None:
            run = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            if "dcmtk" in run.stdout.lower():
                return candidate
    return None


ORTHANC, DCIODVFY = shutil.which("Orthanc"), shutil.which("dciodvfy")
STORESCU, STORESCP = dcmtk_tool("storescu"), dcmtk_tool("storescp")


class Orthanc:
    """Orthanc (Debian package) on loopback ports with a generated configuration in which our
    node is a registered modality (Orthanc refuses C-STOREs from unknown AE titles here)."""

    def __init__(self, folder: Path, node_port: int) -> None:
        self.http, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "inline-cmr test", "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"), "HttpPort": self.http,
            "DicomPort": self.dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [], "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"inlinecmr": {"AET": "INLINECMR", "Host": "127.0.0.1",
                                              "Port": node_port, "AllowStore": True}},
        }  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.log = open(folder / "orthanc.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")],
                                        stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(self._up, "Orthanc", 60)

    def _up(self) -> bool:
        try:
            return "Version" in self.rest("GET", "/system")
        except OSError:
            return False

    def rest(self, method: str, path: str, body: bytes | dict | None = None) -> object:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data, method=method)
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            content = response.read()
        return json.loads(content) if response.headers.get_content_type() == "application/json" \
            else content  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


@pytest.mark.skipif(ORTHANC is None or DCIODVFY is None, reason="orthanc / dicom3tools absent")
def test_orthanc_sends_a_study_and_receives_segmentations_and_maps(study, models, tmp_path):
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", node_port)
    settings = NodeSettings("INLINECMR", "127.0.0.1", node_port, ("ORTHANC",), ("127.0.0.1",), 1.0)
    sender = StoreSender(Destination("127.0.0.1", pacs.dicom_port, "ORTHANC"), "INLINECMR")
    node = DicomNode(settings, Spool(tmp_path / "spool"), models, sender)
    try:
        for path in dicom_files(study):
            pacs.rest("POST", "/instances", path.read_bytes())
        (study_id,) = pacs.rest("GET", "/studies")
        node.start()
        pacs.rest("POST", "/modalities/inlinecmr/store",
                  {"Resources": [study_id], "Synchronous": True})  # fmt: skip
        n_sent = len(dicom_files(study))
        wait_for(lambda: len(pacs.rest("GET", f"/studies/{study_id}/instances")) == n_sent + 14,
                 "the results in Orthanc")  # fmt: skip
        instances = pacs.rest("GET", f"/studies/{study_id}/instances")
        files = [pacs.rest("GET", f"/instances/{i['ID']}/file") for i in instances]
    finally:
        node.stop()
        pacs.stop()
    results = []
    for k, content in enumerate(files):
        path = tmp_path / f"result_{k}.dcm"
        path.write_bytes(content)
        ds = pydicom.dcmread(path)
        if str(ds.SOPClassUID) in RESULT_CLASSES:
            results.append((path, ds))
    assert Counter(str(ds.SOPClassUID) for _, ds in results) == FULL_STUDY
    for path, ds in results:
        if ds.SOPClassUID == SEG:
            assert hd.seg.segread(path).number_of_segments >= 1
        elif ds.SOPClassUID == PM:
            assert np.isfinite(map_values(hd.pm.ParametricMap.from_dataset(ds))).sum() > 100
        assert not dciodvfy_errors(path), path


@pytest.mark.skipif(None in (STORESCU, STORESCP, DCIODVFY), reason="dcmtk / dicom3tools absent")
def test_dcmtk_storescu_to_the_node_and_results_to_storescp(study, models, tmp_path):
    received, scp_port = tmp_path / "received", free_port()
    received.mkdir()
    storescp = subprocess.Popen([STORESCP, "-aet", "RESULTS", "-od", str(received),
                                 str(scp_port)])  # fmt: skip
    sender = StoreSender(Destination("127.0.0.1", scp_port, "RESULTS"), "INLINECMR")
    settings = NodeSettings("INLINECMR", "127.0.0.1", 0, ("SCANNER",), ("127.0.0.1",), 0.5)
    node = DicomNode(settings, Spool(tmp_path / "spool"), models, sender)
    try:
        _, port = node.start()
        t2 = study.files[9]  # JPEG lossless: storescu proposes it (-xs) and sends it as it is
        run = subprocess.run([STORESCU, "-xs", "-aet", "SCANNER", "-aec", "INLINECMR",
                              "127.0.0.1", str(port), *map(str, t2)],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        wait_for(lambda: len(list(received.iterdir())) == 3, "storescp's files")
    finally:
        node.stop()
        storescp.terminate()
        storescp.wait(timeout=30)
    files = sorted(received.iterdir())
    assert Counter(str(pydicom.dcmread(p).SOPClassUID) for p in files) == Counter([SEG, PM, SC])
    for path in files:
        assert not dciodvfy_errors(path), path
