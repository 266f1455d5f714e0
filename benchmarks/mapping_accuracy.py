"""Accuracy of the T2 and ECV mapping pipeline on phantoms with their true masks (issue 6).

Generates ``--patients`` mapping phantoms (``datamodules.synthetic.mapping_phantom``), runs
:class:`exports.mapping_pipeline.MappingPipeline` on the stored (true) masks and compares with
the stored truth (``truth/t2_ms``, ``truth/ecv_percent``, image-0 geometry) on the same pixels:

- pixel level: mean and SD of (map - truth) over all analysed pixels;
- slice / AHA segment / patient level: the mean of the map vs the mean of the truth over the
  same pixels, Bland-Altman bias +- SD and Pearson R (successful slices only).

Goal (issue 6): bias <= 0.3 ms (T2) and <= 0.3 percentage points (ECV), Pearson R >= 0.95 per
segment. One table, one row per condition (phantom options x pipeline settings, see
``CONDITIONS``), quantity and level. Usage::

    .venv/bin/python benchmarks/mapping_accuracy.py [--patients 12] [--seed 1]
        [--conditions default noise-free ...] [--prune-px 2] [--verbose]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.synthetic.mapping_phantom import TE_T2_MS, write_mapping_phantoms  # noqa: E402
from exports.mapping_cli import read_acquisitions  # noqa: E402
from exports.mapping_pipeline import MappingPipeline, MappingSettings  # noqa: E402


def _finite_pairs(auto: list[float], ref: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The (auto, truth) pairs where both are finite."""
    a, r = np.asarray(auto), np.asarray(ref)
    ok = np.isfinite(a) & np.isfinite(r)
    return a[ok], r[ok]


def _agreement(auto: list[float], ref: list[float]) -> str:
    a, r = _finite_pairs(auto, ref)
    if a.size < 3:
        return f"n={a.size} (too few)"
    d = a - r
    pearson = float(np.corrcoef(a, r)[0, 1])
    return (
        f"n={a.size:5d}  auto {a.mean():6.2f}+-{a.std():5.2f}  "
        f"truth {r.mean():6.2f}+-{r.std():5.2f}"
        f"  bias {d.mean():+6.3f}+-{d.std(ddof=1):5.2f}  R {pearson:.3f}"
    )


def evaluate(
    quantity: str, pipeline: MappingPipeline, paths: dict[str, Path], verbose: bool = True
) -> dict[str, tuple[list[float], list[float]]]:
    """(auto, truth) lists per level (pixel, slice, segment, patient) for 't2' or 'ecv'."""
    levels: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("pixel", "slice", "segment", "patient")
    }
    truth_file = paths["t2"] if quantity == "t2" else paths["post_contrast"]
    truth_key = "truth/t2_ms" if quantity == "t2" else "truth/ecv_percent"
    if quantity == "t2":
        cases = [(c, a, s, None) for c, a, s in read_acquisitions(paths["t2"], "te_ms")]
    else:
        native = {c: s for c, _, s in read_acquisitions(paths["t1_native"], "ti_ms")}
        cases = [
            (c, a, s, native[c]) for c, a, s in read_acquisitions(paths["post_contrast"], "ti_ms")
        ]
    n_slices = n_ok = refined = n_images = 0
    with h5py.File(truth_file, "r") as h5:
        for case_id, attrs, slices, native_slices in cases:
            patient_auto, patient_truth = [], []
            for k, acq in enumerate(slices):
                if quantity == "t2":
                    result = pipeline.t2_slice(acq)
                else:
                    result = pipeline.ecv_slice(native_slices[k], acq, float(attrs["hematocrit"]))
                n_slices += 1
                refined += result.refined_images
                n_images += result.n_images
                if not result.success:
                    continue
                n_ok += 1
                truth = h5[case_id][acq.slice_id][truth_key][()].astype(np.float64)
                ok = np.isfinite(result.values) & np.isfinite(truth)
                auto_px, truth_px = result.values[ok].astype(np.float64), truth[ok]
                levels["pixel"][0].extend(auto_px)
                levels["pixel"][1].extend(truth_px)
                levels["slice"][0].append(auto_px.mean())
                levels["slice"][1].append(truth_px.mean())
                patient_auto.extend(auto_px)
                patient_truth.extend(truth_px)
                if result.segment_labels is not None:
                    seg = np.where(ok, result.segment_labels, 0)
                    for s in np.unique(seg[seg > 0]):
                        levels["segment"][0].append(result.values[seg == s].mean())
                        levels["segment"][1].append(truth[seg == s].mean())
            if patient_auto:
                levels["patient"][0].append(float(np.mean(patient_auto)))
                levels["patient"][1].append(float(np.mean(patient_truth)))
    if verbose or n_ok < n_slices:
        print(f"  {quantity}: {n_ok}/{n_slices} slices successful, refinement rate "
              f"{refined / max(n_images, 1):.3f}")  # fmt: skip
    return levels


CONDITIONS = {
    # name: (phantom options, pipeline settings overrides)
    "default": ({}, {}),
    "default, no coil correction": ({}, {"coil_correction": False}),
    "default, no noise-floor removal": ({}, {"noise_floor_correction": False}),
    "default, disc-median blood": ({}, {"blood_statistic": "median"}),
    "default, T2 B/A shared by the slice": ({}, {"t2_model": "t2_shared_offset"}),
    "SNR 30": ({"snr_range": (30.0, 30.0)}, {}),
    "SNR 100": ({"snr_range": (100.0, 100.0)}, {}),
    "noise-free": ({"noise": False}, {}),
    "noise-free, no coil correction": ({"noise": False}, {"coil_correction": False}),
    "noise-free, T2 B/A shared by the slice": ({"noise": False}, {"t2_model": "t2_shared_offset"}),
    "no motion": ({"motion": False}, {}),
    "noise-free, no motion": ({"noise": False, "motion": False}, {}),
}


def t2_precision_floor_ms(te_ms: np.ndarray, t2_ms: float, snr: float) -> dict[str, float]:
    """Cramer-Rao lower bound of the SD of a per-pixel T2 estimate (ms), A = 1, sigma = 1 / snr.

    ``t2_3p``: ``A exp(-TE/T2) + B`` with B free per pixel; ``t2_2p``: B known (what sharing B / A
    across the slice approaches). The bound says how far pixel averaging must go for a segment
    mean to reach a given SD: sd_segment >= bound / sqrt(pixels per segment).
    """
    decay = np.exp(-te_ms / t2_ms)
    jacobian = np.stack([decay, te_ms / t2_ms**2 * decay, np.ones_like(te_ms)], axis=1)
    bounds = {}
    for name, cols in (("t2_3p", 3), ("t2_2p", 2)):
        fisher = jacobian[:, :cols].T @ jacobian[:, :cols] * snr**2
        bounds[name] = float(np.sqrt(np.linalg.inv(fisher)[1, 1]))
    return bounds


def _row(auto: list[float], ref: list[float]) -> str:
    a, r = _finite_pairs(auto, ref)
    if a.size < 3:
        return f"{a.size:5d}  (too few)"
    d = a - r
    return f"{a.size:5d}  {d.mean():+7.3f} +- {d.std(ddof=1):5.2f}  {np.corrcoef(a, r)[0, 1]:6.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                        choices=list(CONDITIONS), metavar="NAME",
                        help=f"conditions to run (default all): {list(CONDITIONS)}")  # fmt: skip
    parser.add_argument("--prune-px", type=int, default=MappingSettings().prune_px)
    parser.add_argument("--verbose", action="store_true", help="pixel level and means too")
    args = parser.parse_args(argv)
    print(f"{args.patients} phantom patients (seed {args.seed}), true masks; bias = map - truth "
          "(T2 ms, ECV percentage points) +- SD, Pearson R; goal: |bias| <= 0.3, R >= 0.95 per "
          "segment")  # fmt: skip
    te_ms = np.asarray(TE_T2_MS, dtype=np.float64)
    for snr in (10.0, 30.0, 60.0):
        floor = t2_precision_floor_ms(te_ms, 50.0, snr)
        print(f"T2 precision floor (Cramer-Rao, T2 50 ms, TE {TE_T2_MS[0]:g}..{TE_T2_MS[-1]:g} ms, "
              f"SNR {snr:g}): {floor['t2_3p']:.1f} ms per pixel with B free, "
              f"{floor['t2_2p']:.1f} ms with B known")  # fmt: skip
    header = f"{'condition':32s} {'qty':3s} {'level':8s} {'n':>5s}  {'bias +- SD':>16s}  {'R':>6s}"
    rows = [header, "-" * len(header)]
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, dict[str, Path]] = {}
        for name in args.conditions:
            phantom, overrides = CONDITIONS[name]
            key = repr(sorted(phantom.items()))
            if key not in cache:
                folder = Path(tmp) / f"p{len(cache)}"
                cache[key] = write_mapping_phantoms(folder, args.patients, args.seed, **phantom)
            settings = MappingSettings(prune_px=args.prune_px, **overrides)
            pipeline = MappingPipeline(settings)
            start = time.perf_counter()
            for quantity in ("t2", "ecv"):
                levels = evaluate(quantity, pipeline, cache[key], verbose=args.verbose)
                for level in ("patient", "slice", "segment") + (("pixel",) if args.verbose else ()):
                    rows.append(f"{name:32s} {quantity:3s} {level:8s} {_row(*levels[level])}")
                    if args.verbose:
                        print(f"  {name} {quantity} {level}: {_agreement(*levels[level])}")
            print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
