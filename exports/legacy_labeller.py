"""Bootstrap labels with the legacy detector: ``python -m exports aif --legacy --input cases.h5
--output labels.h5`` (method.md §A3: the paper's labels began as legacy output checked by an
expert).

The output is a copy of the input AIF contract file in which every case the detector labelled has
a ``mask`` (0 background, 1 LV, 2 RV) and the attrs ``label_source = "legacy_aif_detector"``,
``label_status = "ok"``; a case where the detector finds no LV keeps no mask and gets
``label_status = "failed"`` and ``label_error`` (so an expert can label it by hand). A mask already
in the input is kept as ``mask_previous``. A case that breaks the contract is left out and
reported. ``labels.json`` beside the output lists the status of every case. Both are written
atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py

from formats.aif_contract import AIFContractError, read_aif_case
from formats.atomic_file import atomic_write
from quantification.legacy_aif_detector import LegacyDetectorSettings, detect_lv_legacy
from quantification.lv_mask import LABEL_LV, LABEL_RV

LABEL_SOURCE = "legacy_aif_detector"


def write_legacy_labels(
    input_path: str | Path,
    output_path: str | Path,
    settings: LegacyDetectorSettings = LegacyDetectorSettings(),  # noqa: B008 (frozen)
) -> dict[str, dict]:
    """Label every case of ``input_path`` into ``output_path`` (layout in the module docstring).

    Returns:
        ``{case_id: {"status": "ok", "lv_pixels": n, "rv_pixels": n} | {"status": "failed" |
        "skipped", "error": reason}}`` in file order; also written to ``<output>.json``.

    Raises:
        AIFContractError: the input is not a readable HDF5 file.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise AIFContractError(f"{input_path}: expected an existing HDF5 file; found no such file")
    if input_path.resolve() == output_path.resolve():
        raise ValueError(f"{output_path}: the output must differ from the input")
    status: dict[str, dict] = {}
    try:
        src = h5py.File(input_path, "r")
    except OSError as exc:
        raise AIFContractError(f"{input_path}: expected a readable HDF5 file; found {exc}") from exc
    with src, atomic_write(output_path) as tmp, h5py.File(tmp, "w") as dst:
        dst.attrs.update(dict(src.attrs))
        dst.attrs["label_source"] = LABEL_SOURCE
        for case_id in src:
            try:
                case = read_aif_case(src, case_id, input_path)
                found = detect_lv_legacy(case.series, case.times_s, case.n_pd_frames, settings)
            except (AIFContractError, ValueError) as exc:
                status[case_id] = {"status": "skipped", "error": f"{type(exc).__name__}: {exc}"}
                continue
            src.copy(src[case_id], dst, name=case_id)
            group = dst[case_id]
            if "mask" in group:
                group.move("mask", "mask_previous")
            group.attrs["label_source"] = LABEL_SOURCE
            if found.found:
                group.create_dataset("mask", data=found.labels)
                group.attrs["label_status"] = "ok"
                status[case_id] = {
                    "status": "ok",
                    "lv_pixels": int((found.labels == LABEL_LV).sum()),
                    "rv_pixels": int((found.labels == LABEL_RV).sum()),
                }
            else:
                group.attrs["label_status"] = "failed"
                group.attrs["label_error"] = found.reason
                status[case_id] = {"status": "failed", "error": found.reason}
    with atomic_write(output_path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"input": str(input_path), "cases": status}, indent=1))
    return status


def run_legacy_labeller(args: argparse.Namespace) -> int:
    """``python -m exports aif --legacy``: exit 0 all labelled, 1 some not, 2 unusable input."""
    try:
        status = write_legacy_labels(args.input, args.output)
    except (AIFContractError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for case_id, s in status.items():
        outcome = "ok" if s["status"] == "ok" else f"{s['status'].upper()}: {s['error']}"
        print(f"{case_id}: {outcome}")
    n_ok = sum(s["status"] == "ok" for s in status.values())
    print(
        f"{n_ok} of {len(status)} cases labelled by the legacy detector; wrote {args.output} and "
        f"{Path(args.output).with_suffix('.json')} (check the labels before training on them)"
    )
    return 0 if n_ok == len(status) else 1
