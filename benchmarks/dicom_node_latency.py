"""End-to-end latency of the DICOM node: Orthanc -> ``python -m exports dicom-node`` -> Orthanc.

``python benchmarks/dicom_node_latency.py [--studies 3] [--quiet-time-s 1] [--threads 2]``

Needs the Debian package ``orthanc``. Each study is a phantom patient's scanner export (GE
perfusion AIF 76 images, Siemens MOLLI native 11, Philips MOLLI post-contrast 12, Siemens T2-prep
9 in JPEG lossless; tests/dicom/vendor_dicom.py), processed with the stand-in models of
tests/test_dicom_node.py (TorchScript artifacts, loaded once when the node starts: model loads
are not timed). Orthanc (generated configuration, loopback ports, the node a registered
modality) stores the study, then sends it to the node with its REST API (``POST
/modalities/inlinecmr/store``, synchronous: it returns when the node acknowledged the last
image). Printed per study: the seconds from that return until the 14 results (5 Segmentations,
4 Parametric Maps, 5 Secondary Captures) are all in Orthanc, and the node's own figures (its
processing round and its sending). The first line names the CPU and the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployment.cpu_info import host_cpu  # noqa: E402
from tests.dicom.vendor_dicom import write_phantom_study  # noqa: E402
from tests.test_dicom_node import Orthanc, export_stand_in_models, free_port  # noqa: E402

N_RESULTS = 14


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--quiet-time-s", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-figures", action="store_true", help="the node's --no-figures")
    args = parser.parse_args()
    print(f"CPU: {host_cpu().describe()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        studies = [write_phantom_study(folder / f"study_{k}", seed=k) for k in range(args.studies)]
        models = export_stand_in_models(studies[0], folder / "models")
        node_port = free_port()
        pacs = Orthanc(folder / "orthanc", node_port)
        node = subprocess.Popen(
            [sys.executable, "-m", "exports", "dicom-node", "--port", str(node_port),
             "--aif-model", models["aif"], "--myocardium-model", models["myocardium"],
             "--hematocrit", "0.42", "--send-to", f"127.0.0.1:{pacs.dicom_port}:ORTHANC",
             "--spool", folder / "spool", "--quiet-time-s", str(args.quiet_time_s),
             "--threads", str(args.threads), *(["--no-figures"] if args.no_figures else [])],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(node.stdout), daemon=True).start()
        try:
            while not any(line.startswith("listening on") for line in lines):
                if node.poll() is not None:
                    raise SystemExit("".join(lines))
                time.sleep(0.1)
            for k, study in enumerate(studies):
                files = [p for series in study.files.values() for p in series]
                for path in files:
                    pacs.rest("POST", "/instances", path.read_bytes())
                study_id = _study_of(pacs, str(study.study.study_uid))
                pacs.rest("POST", "/modalities/inlinecmr/store",
                          {"Resources": [study_id], "Synchronous": True})  # fmt: skip
                sent = time.perf_counter()
                n_results = N_RESULTS - (5 if args.no_figures else 0)
                expected = len(files) + n_results
                while len(pacs.rest("GET", f"/studies/{study_id}/instances")) < expected:
                    time.sleep(0.02)
                elapsed = time.perf_counter() - sent
                print(f"study {k}: {len(files)} images; all {n_results} results in Orthanc "
                      f"{elapsed:.2f} s after the last image was acknowledged "
                      f"(quiet time {args.quiet_time_s:g} s)")  # fmt: skip
                time.sleep(0.5)
                for line in lines:
                    if ("round" in line and "result(s) in" in line) or "sent " in line:
                        print("   node:", line.split(" exports.dicom_node ")[-1].strip())
                lines.clear()
        finally:
            node.terminate()
            node.wait(timeout=60)
            node.stdout.close()
            pacs.stop()


def _study_of(pacs: Orthanc, study_uid: str) -> str:
    found = pacs.rest("POST", "/tools/lookup", study_uid.encode())
    return next(item["ID"] for item in found if item["Type"] == "Study")


if __name__ == "__main__":
    main()
