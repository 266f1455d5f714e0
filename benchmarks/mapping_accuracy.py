"""Accuracy of the T1, T2 and ECV mapping pipeline on phantoms with known truth (issues 6, 15).

Generates ``--patients`` mapping phantoms (``datamodules.synthetic.mapping_phantom``) per T1
sequence, runs :class:`exports.mapping_pipeline.MappingPipeline` on the stored (true) masks with
``segment_fit="roi"`` and compares with the stored truth (``truth/t1_ms``, ``truth/t2_ms``,
``truth/ecv_percent``, image-0 geometry) on the same pixels. Each slice / AHA segment value is
reported two ways: ``pixel`` = the mean of the pixel map, ``roi`` = the fit of the region's mean
signal; the truth is the mean of the true map over the same pixels. Figures: bias (map - truth)
+- SD of the differences and Pearson R, successful slices only.

Sections (``--sections``):

- ``t1``: per sequence (``--sequences``: STONE, MOLLI 5(3)3 / 4(1)3(1)2, ShMOLLI, SASHA), native
  and post-contrast T1 at the default phantom SNR (10-60), per slice and per segment, bias also
  in % of T1. Goal: |bias| <= 1 % of T1 on slice means, every sequence.
- ``t2``: (a) efficiency of the per-pixel T2 estimator: Monte-Carlo pixels (Gaussian noise of
  SD 1/SNR on ``exp(-TE/T2) + 0.02``, the phantom echo times) against the Cramer-Rao bound of
  the model fitted, at SNR 30 and 60 and T2 45, 55, 65 ms (goal: SD <= 1.2x the bound, |bias|
  <= 1 %); (b) per segment on the default phantoms (goal for ``roi``: |bias| <= 0.5 ms,
  R >= 0.9; the paper's per-segment R is 0.75); (c) slice means at SNR 30 and 60 (goal:
  |bias| <= 0.3 ms, R >= 0.95).
- ``ecv``: per sequence, ECV at the default SNR (native and post-contrast with the same model).
- ``ablations``: the earlier T2/ECV table (coil and noise-floor corrections, blood statistic,
  T2 model, noise-free and motion-free phantoms) with pixel means, STONE phantoms.

Usage::

    .venv/bin/python benchmarks/mapping_accuracy.py [--patients 12] [--seed 1]
        [--sections t1 t2 ecv] [--sequences stone molli shmolli sasha] [--verbose]
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

from datamodules.synthetic.mapping_phantom import (  # noqa: E402
    SEQUENCES,
    TE_T2_MS,
    write_mapping_phantoms,
)
from deployment.cpu_info import host_cpu  # noqa: E402
from exports.mapping_input import read_acquisitions  # noqa: E402
from exports.mapping_pipeline import MappingPipeline, MappingSettings  # noqa: E402
from quantification.relaxometry import estimate_offset_fraction, fit_t2, t2_signal  # noqa: E402

PAPER_SEGMENT_R = 0.75
"""Per-segment Pearson R of the automated T2 in the paper (docs/method.md §B5, Exp#1)."""
LEVELS = ("slice", "segment", "patient")


def _finite_pairs(auto: list[float], ref: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The (auto, truth) pairs where both are finite."""
    a, r = np.asarray(auto, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(r)
    return a[ok], r[ok]


def agreement(auto: list[float], ref: list[float]) -> dict[str, float]:
    """n, bias, SD of the differences, bias in % of the mean truth and Pearson R."""
    a, r = _finite_pairs(auto, ref)
    if a.size < 3:
        return {"n": float(a.size)}
    d = a - r
    return {
        "n": float(a.size),
        "bias": float(d.mean()),
        "sd": float(d.std(ddof=1)),
        "bias_percent": float(100 * d.mean() / r.mean()),
        "sd_percent": float(100 * (d / r).std(ddof=1)),
        "r": float(np.corrcoef(a, r)[0, 1]),
    }


def _row(label: str, stats: dict[str, float], percent: bool = False) -> str:
    if "bias" not in stats:
        return f"{label}  n={int(stats['n'])} (too few)"
    extra = f"  ({stats['bias_percent']:+6.2f} % +- {stats['sd_percent']:5.2f} %)"
    return (f"{label}  n={int(stats['n']):4d}  bias {stats['bias']:+8.3f} +- {stats['sd']:7.3f}"
            f"{extra if percent else ''}  R {stats['r']:.3f}")  # fmt: skip


Pairs = dict[str, tuple[list[float], list[float]]]


def evaluate(
    quantity: str, pipeline: MappingPipeline, paths: dict[str, Path], modality: str = "t1_native"
) -> tuple[Pairs, str]:
    """(auto, truth) lists per ``<method>/<level>`` (pixel/roi x slice/segment/patient) and a
    one-line summary. ``quantity``: ``t1`` (of ``modality``), ``t2`` or ``ecv``."""
    out: Pairs = {f"{m}/{lv}": ([], []) for m in ("pixel", "roi") for lv in LEVELS}
    if quantity == "t2":
        truth_file, truth_key = paths["t2"], "truth/t2_ms"
        cases = [(c, a, s, None) for c, a, s in read_acquisitions(paths["t2"], "te_ms")]
    elif quantity == "t1":
        truth_file, truth_key = paths[modality], "truth/t1_ms"
        cases = [(c, a, s, None) for c, a, s in read_acquisitions(paths[modality], "ti_ms")]
    else:
        truth_file, truth_key = paths["post_contrast"], "truth/ecv_percent"
        native = {c: s for c, _, s in read_acquisitions(paths["t1_native"], "ti_ms")}
        cases = [
            (c, a, s, native[c]) for c, a, s in read_acquisitions(paths["post_contrast"], "ti_ms")
        ]
    n_slices = n_ok = 0
    with h5py.File(truth_file, "r") as h5:
        for case_id, attrs, slices, native_slices in cases:
            patient: dict[str, list[float]] = {"auto": [], "truth": []}
            case_t2 = pipeline.t2_case(slices) if quantity == "t2" else []
            for k, acq in enumerate(slices):
                if quantity == "t2":
                    result = case_t2[k]
                elif quantity == "t1":
                    result = pipeline.t1_slice(acq)
                else:
                    result = pipeline.ecv_slice(native_slices[k], acq, float(attrs["hematocrit"]))
                n_slices += 1
                if not result.success:
                    continue
                n_ok += 1
                truth = h5[case_id][acq.slice_id][truth_key][()].astype(np.float64)
                ok = np.isfinite(result.values) & np.isfinite(truth)
                auto_px, truth_px = result.values[ok].astype(np.float64), truth[ok]
                roi = result.details.get("segment_fit") == "roi"
                out["pixel/slice"][0].append(auto_px.mean())
                out["pixel/slice"][1].append(truth_px.mean())
                out["roi/slice"][0].append(result.mean if roi else np.nan)
                out["roi/slice"][1].append(truth_px.mean())
                patient["auto"].extend(auto_px)
                patient["truth"].extend(truth_px)
                if result.segment_labels is not None:
                    seg = np.where(ok, result.segment_labels, 0)
                    for s in np.unique(seg[seg > 0]):
                        out["pixel/segment"][0].append(result.values[seg == s].mean())
                        out["pixel/segment"][1].append(truth[seg == s].mean())
                        out["roi/segment"][0].append(result.segments[s - 1] if roi else np.nan)
                        out["roi/segment"][1].append(truth[seg == s].mean())
            if patient["auto"]:
                out["pixel/patient"][0].append(float(np.mean(patient["auto"])))
                out["pixel/patient"][1].append(float(np.mean(patient["truth"])))
    return out, f"{n_ok}/{n_slices} slices successful"


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


def t2_efficiency(n_pixels: int = 20000, seed: int = 0, offset_fraction: float = 0.02) -> list[str]:
    """Section t2 (a): SD and bias of both T2 estimators against their Cramer-Rao bounds."""
    te = np.asarray(TE_T2_MS, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = [
        f"T2 (a) per-pixel estimator vs Cramer-Rao bound (Gaussian noise SD 1/SNR, A = 1, "
        f"B/A = {offset_fraction}, TE {TE_T2_MS[0]:g}, {TE_T2_MS[1]:g}..{TE_T2_MS[-1]:g} ms, "
        f"{n_pixels} pixels; goal SD <= 1.2x bound, |bias| <= 1 %)"
    ]
    for snr in (30.0, 60.0):
        for t2 in (45.0, 55.0, 65.0):
            clean = t2_signal(te, np.ones(n_pixels), np.full(n_pixels, t2),
                              np.full(n_pixels, offset_fraction))  # fmt: skip
            noisy = clean + rng.normal(0.0, 1.0 / snr, clean.shape)
            bounds = t2_precision_floor_ms(te, t2, snr)
            beta = estimate_offset_fraction(noisy, te)
            for name, fit, bound in (
                ("shared offset (default)", fit_t2(noisy, te, offset_fraction=beta),
                 bounds["t2_2p"]),
                ("B free per pixel (SPEC)", fit_t2(noisy, te), bounds["t2_3p"]),
            ):  # fmt: skip
                t = fit.t_ms[np.isfinite(fit.t_ms)]
                rows.append(
                    f"  SNR {snr:4.0f}  T2 {t2:4.0f} ms  {name:24s} SD {t.std():6.2f} ms  bound "
                    f"{bound:6.2f}  ratio {t.std() / bound:5.2f}  bias "
                    f"{100 * (t.mean() - t2) / t2:+6.2f} %  failed {1 - t.size / n_pixels:.4f}"
                )
    return rows


ABLATIONS = {
    # name: (phantom options, pipeline settings overrides)
    "default": ({}, {}),
    "default, no coil correction": ({}, {"coil_correction": False}),
    "default, no noise-floor removal": ({}, {"noise_floor_correction": False}),
    "default, disc-median blood": ({}, {"blood_statistic": "median"}),
    "default, T2 B free per pixel": ({}, {"t2_model": "t2_3p"}),
    "SNR 100": ({"snr_range": (100.0, 100.0)}, {}),
    "noise-free": ({"noise": False}, {}),
    "noise-free, no coil correction": ({"noise": False}, {"coil_correction": False}),
    "noise-free, T2 B free per pixel": ({"noise": False}, {"t2_model": "t2_3p"}),
    "no motion": ({"motion": False}, {}),
    "noise-free, no motion": ({"noise": False, "motion": False}, {}),
}


class Phantoms:
    """Phantom files written on demand into a temporary folder, one set per option set."""

    def __init__(self, folder: Path, patients: int, seed: int) -> None:
        self.folder, self.patients, self.seed = folder, patients, seed
        self.cache: dict[str, dict[str, Path]] = {}

    def __call__(self, **options) -> dict[str, Path]:
        key = repr(sorted(options.items()))
        if key not in self.cache:
            sub = self.folder / f"p{len(self.cache)}"
            self.cache[key] = write_mapping_phantoms(sub, self.patients, self.seed, **options)
        return self.cache[key]


def _timed(label: str, start: float) -> None:
    print(f"  [{label}: {time.perf_counter() - start:.1f} s]", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sections", nargs="+", default=["t1", "t2", "ecv"],
                        choices=["t1", "t2", "ecv", "ablations"])  # fmt: skip
    parser.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=SEQUENCES)
    parser.add_argument("--verbose", action="store_true", help="patient level too")
    args = parser.parse_args(argv)
    print(f"CPU: {host_cpu().describe()}")
    print(f"{args.patients} phantom patients x 5 slices (seed {args.seed}), true masks; bias = "
          "map - truth +- SD of the differences, Pearson R; pixel = mean of the pixel map, roi = "
          "fit of the region's mean signal", flush=True)  # fmt: skip
    levels = LEVELS if args.verbose else LEVELS[:2]
    roi = MappingPipeline(MappingSettings(segment_fit="roi"))
    with tempfile.TemporaryDirectory() as tmp:
        phantoms = Phantoms(Path(tmp), args.patients, args.seed)
        if "t1" in args.sections:
            print("\nT1 (ms; % of T1), default phantom SNR 10-60; goal |bias| <= 1 % on slices")
            for sequence in args.sequences:
                for modality in ("t1_native", "post_contrast"):
                    start = time.perf_counter()
                    pairs, note = evaluate("t1", roi, phantoms(sequence=sequence), modality)
                    print(f" {sequence} {modality}: {note}")
                    for level in levels:
                        for method in ("pixel", "roi"):
                            stats = agreement(*pairs[f"{method}/{level}"])
                            if "bias" in stats or method == "pixel":
                                print(_row(f"  {sequence:8s} {modality:14s} {level:8s} "
                                           f"{method:5s}", stats, percent=True))  # fmt: skip
                    _timed(f"{sequence} {modality}", start)
        if "t2" in args.sections:
            print()
            print("\n".join(t2_efficiency()))
            te = np.asarray(TE_T2_MS, dtype=np.float64)
            for snr in (10.0, 30.0, 60.0):
                floor = t2_precision_floor_ms(te, 50.0, snr)
                print(f"  Cramer-Rao bound at T2 50 ms, SNR {snr:g}: {floor['t2_3p']:.1f} ms with "
                      f"B free, {floor['t2_2p']:.1f} ms with B/A known")  # fmt: skip
            for label, options, goal in (
                ("(b) default phantoms (SNR 10-60)", {}, "segment roi: |bias| <= 0.5 ms, R >= 0.9;"
                 f" paper R {PAPER_SEGMENT_R}"),
                ("(c) SNR 30", {"snr_range": (30.0, 30.0)}, "slice: |bias| <= 0.3 ms, R >= 0.95"),
                ("(c) SNR 60", {"snr_range": (60.0, 60.0)}, "slice: |bias| <= 0.3 ms, R >= 0.95"),
            ):  # fmt: skip
                start = time.perf_counter()
                pairs, note = evaluate("t2", roi, phantoms(**options))
                print(f"T2 {label}: {note}; goal {goal}")
                for level in levels:
                    for method in ("pixel", "roi"):
                        stats = agreement(*pairs[f"{method}/{level}"])
                        if "bias" in stats or method == "pixel":
                            print(_row(f"  T2 {level:8s} {method:5s}", stats))
                _timed(f"T2 {label}", start)
        if "ecv" in args.sections:
            print("\nECV (percentage points), default phantom SNR 10-60, pixel maps")
            pipeline = MappingPipeline()
            for sequence in args.sequences:
                start = time.perf_counter()
                pairs, note = evaluate("ecv", pipeline, phantoms(sequence=sequence))
                print(f" {sequence}: {note}")
                for level in levels:
                    stats = agreement(*pairs[f"pixel/{level}"])
                    print(_row(f"  ECV {sequence:8s} {level:8s}", stats))
                _timed(f"ECV {sequence}", start)
        if "ablations" in args.sections:
            print("\nAblations (STONE phantoms, pixel means)")
            for name, (options, overrides) in ABLATIONS.items():
                pipeline = MappingPipeline(MappingSettings(**overrides))
                for quantity in ("t2", "ecv"):
                    pairs, note = evaluate(quantity, pipeline, phantoms(**options))
                    for level in levels:
                        stats = agreement(*pairs[f"pixel/{level}"])
                        print(_row(f"  {name:34s} {quantity:3s} {level:8s}", stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
