"""Out-of-distribution evaluation of myocardium segmentation artifacts.

``python evaluate.py task=myocardium_ood`` runs exported myocardium artifacts through the
scanner runtime (``exports.mapping_pipeline.MyocardiumSegmenter``: the artifact's own
preprocessing, resize to its grid and back) on families of labelled short-axis images that
training never saw, one report row per family:

- ``in_distribution``: unseen label maps of the training generator with the training contrasts
  and artefacts (the reference row);
- families of the training generator drawn **outside** its training ranges (:data:`FAMILIES`):
  wider and tighter fields of view, hypertrophied and dilated ventricles, artefacts beyond the
  training ranges (SNR 2.5-5, strong shading, coarse matrices, strong ghosts and bands);
- ``independent``: a second generator written separately
  (:mod:`evaluation.independent_short_axis_phantom`);
- ``mapping_<modality>``: the physics mapping phantoms of
  :mod:`datamodules.synthetic.mapping_phantom` (whole-thorax fields, small hearts);
- any labelled mapping contract file the user names (e.g. real scans with expert masks).

Per image: DSC of the thresholded probability map against the reference mask (before any
post-processing, as method.md §B5), the symmetric 95th-percentile Hausdorff distance (HD95, pixels
and
mm where the file gives ``pixel_spacing_mm`` or ``pixel_mm``), and whether the prediction passes
the pipeline's shape QC (largest object, Euler number 0, eccentricity < 0.65). Per family and
artifact: median / mean DSC, median HD95, the QC pass rate and the goal check
(out-of-distribution: median DSC >= 0.80 and >= 95 % QC; in distribution: median DSC >= 0.85).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import ndimage

from evaluation.detection_outcome import dice
from formats.atomic_file import atomic_write
from formats.mapping_contract import (
    open_mapping_file,
    read_mapping_slice,
    scan_mapping_file,
    write_mapping_case,
    write_mapping_slice,
)
from quantification.myocardium_shape import shape_qc

GOAL = {"ood_median_dsc": 0.80, "ood_qc_pass": 0.95, "in_distribution_median_dsc": 0.85}
IN_DISTRIBUTION = "in_distribution"
INDEPENDENT = "independent"
MAPPING_PREFIX = "mapping_"


@dataclass(frozen=True)
class Family:
    """A family of the training generator: overrides of its anatomy / artefact ranges."""

    anatomy: dict
    artefacts: dict
    description: str


FAMILIES: dict[str, Family] = {
    IN_DISTRIBUTION: Family({}, {}, "training ranges, unseen label maps"),
    "wide_field": Family(
        {"blood_pool_fraction": (0.07, 0.115)}, {}, "LV blood pool 7-11.5 % of the width"
    ),
    "tight_crop": Family(
        {"blood_pool_fraction": (0.46, 0.55)}, {}, "LV blood pool 46-55 % of the width"
    ),
    "hypertrophy": Family({"wall_mm": (12.5, 18.0)}, {}, "LV wall 12.5-18 mm at the base"),
    "dilated": Family(
        {"lv_diameter_mm": (60.0, 75.0), "blood_pool_fraction": (0.2, 0.45)},
        {},
        "LV blood pool 60-75 mm",
    ),
    "severe_artefacts": Family(
        {},
        {
            "snr": (2.5, 5.0),
            "bias_field_p": 1.0,
            "bias_field_coeff": 0.8,
            "resolution_p": 1.0,
            "max_downsample": 3.5,
            "ghosting_p": 0.5,
            "ghost_amplitude": (0.1, 0.25),
            "banding_p": 0.5,
        },
        "SNR 2.5-5, strong shading, matrix down to 1/3.5, strong ghosts and bands",
    ),
}


def family_file(data_dir: str | os.PathLike, family: str, n_slices: int, seed: int) -> Path:
    """The cached file of a generated family (written on first use); see :data:`FAMILIES`
    and :data:`INDEPENDENT`."""
    from datamodules.synthetic.short_axis_anatomy import POOL_VERSION

    path = Path(data_dir) / f"myo_ood_v{POOL_VERSION}_{family}_n{n_slices}_seed{seed}.h5"
    if not path.exists():
        if family == INDEPENDENT:
            from evaluation.independent_short_axis_phantom import write_independent_short_axis

            write_independent_short_axis(path, n_slices, seed)
        elif family in FAMILIES:
            write_generated_family(path, FAMILIES[family], n_slices, seed)
        else:
            raise ValueError(
                f"unknown family {family!r}: expected {sorted(FAMILIES)} or {INDEPENDENT}"
            )
    return path


def write_generated_family(path: str | os.PathLike, family: Family, n_slices: int, seed: int):
    """``n_slices`` slices of the training generator with ``family``'s ranges, two images each
    (two independent draws of the training contrast mix and artefacts), as a mapping contract
    file; modality attr ``t1_native`` and ``ti_ms`` [0, 1] stand for 'any contrast' (slice attr
    ``contrast`` names the two)."""
    from datamodules.mapping_transforms import AcquisitionArtefacts, ArtefactSettings
    from datamodules.synthetic.short_axis_anatomy import (
        MYOCARDIUM,
        AnatomyRanges,
        render_short_axis,
    )
    from datamodules.synthetic.tissue_contrast import ContrastSettings, tissue_image

    anatomy = AnatomyRanges(**family.anatomy)
    artefacts = AcquisitionArtefacts(ArtefactSettings(**family.artefacts))
    contrast = ContrastSettings()
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(generator="datamodules.synthetic.short_axis_anatomy", seed=seed,
                       family=json.dumps(family.__dict__, default=list))  # fmt: skip
        for i in range(n_slices):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
            labels, info = render_short_axis(rng, anatomy)
            images, kinds = [], []
            for _ in range(2):
                clean, myo, kind = tissue_image(labels, rng, contrast)
                images.append(artefacts(clean, myo, rng).numpy())
                kinds.append(kind)
            case = write_mapping_case(f, f"case_{i:04d}", f"G{i:04d}")
            attrs = {"pixel_mm": np.array(info["pixel_mm"]), "contrast": ",".join(kinds),
                     "blood_pool_fraction": info["blood_pool_fraction"]}  # fmt: skip
            masks = np.repeat((labels == MYOCARDIUM)[None], 2, 0)
            write_mapping_slice(case, "slice_0", np.stack(images), np.arange(2.0), "t1_native",
                                info["level"], masks=masks, attrs=attrs)  # fmt: skip
    return Path(path)


def hd95(predicted: np.ndarray, reference: np.ndarray, spacing=(1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the boundaries of two 2-D masks, in
    the units of ``spacing`` (rows, cols); inf when exactly one mask is empty, 0 when both are.

    Boundary pixels are the mask minus its 8-connected erosion; distances come from Euclidean
    distance transforms (SciPy).

    Example:
        >>> a = np.zeros((20, 20), bool); a[5:15, 5:15] = True
        >>> b = np.roll(a, 2, axis=1)
        >>> hd95(a, b)
        2.0
    """
    p, r = np.asarray(predicted, bool), np.asarray(reference, bool)
    if not p.any() and not r.any():
        return 0.0
    if not p.any() or not r.any():
        return float("inf")
    eight = np.ones((3, 3), bool)
    edge_p = p & ~ndimage.binary_erosion(p, eight, border_value=0)
    edge_r = r & ~ndimage.binary_erosion(r, eight, border_value=0)
    to_r = ndimage.distance_transform_edt(~edge_r, sampling=spacing)[edge_p]
    to_p = ndimage.distance_transform_edt(~edge_p, sampling=spacing)[edge_r]
    return float(np.percentile(np.concatenate([to_r, to_p]), 95))


@dataclass
class ImageResult:
    """One evaluated image: identifiers, metrics and (kept for figures) the pixels."""

    case_id: str
    slice_id: str
    image_index: int
    dsc: float
    hd95_px: float
    hd95_mm: float | None
    qc_valid: bool
    qc_reason: str
    reference_qc_valid: bool
    image: np.ndarray | None = None
    reference: np.ndarray | None = None
    predicted: np.ndarray | None = None


def _spacing(attrs: dict, case_attrs: dict) -> tuple[float, float] | None:
    for source in (attrs, case_attrs):
        for key in ("pixel_spacing_mm", "pixel_mm"):
            if key in source:
                value = np.atleast_1d(np.asarray(source[key], np.float64))
                return (float(value[0]), float(value[-1]))
    return None


def evaluate_file(
    path: str | os.PathLike,
    segmenter: Callable[[np.ndarray], np.ndarray],
    max_images: int | None = None,
    keep_pixels: bool = True,
) -> list[ImageResult]:
    """Every labelled image of a mapping contract file (or ``max_images`` of them, spread evenly
    over the file) through ``segmenter`` (float32 [N, H, W] images -> P(myocardium) [N, H, W]).

    Raises:
        MappingContractError: the file breaks the contract or has no masks (named file, key).
    """
    infos = scan_mapping_file(path, require_masks=True)
    items = [(i, n) for i, info in enumerate(infos) for n in range(info.n_images)]
    if max_images is not None and len(items) > max_images:
        keep = np.unique(np.linspace(0, len(items) - 1, max_images).round().astype(int))
        items = [items[k] for k in keep]
    wanted: dict[int, list[int]] = {}
    for i, n in items:
        wanted.setdefault(i, []).append(n)
    results = []
    with open_mapping_file(path) as h5:
        for i, indices in wanted.items():
            info = infos[i]
            data = read_mapping_slice(h5, info.case_id, info.slice_id, path, require_masks=True)
            images = data.images[indices]
            probabilities = np.asarray(segmenter(images))
            spacing = _spacing(info.attrs, info.case_attrs)
            for k, n in enumerate(indices):
                predicted = probabilities[k] > 0.5
                reference = data.masks[n].astype(bool)
                qc = shape_qc(predicted)
                distance = hd95(predicted, reference)
                results.append(
                    ImageResult(
                        case_id=info.case_id,
                        slice_id=info.slice_id,
                        image_index=n,
                        dsc=dice(predicted, reference),
                        hd95_px=distance,
                        hd95_mm=None if spacing is None else hd95(predicted, reference, spacing),
                        qc_valid=qc.valid,
                        qc_reason=qc.reason,
                        reference_qc_valid=shape_qc(reference).valid,
                        image=images[k] if keep_pixels else None,
                        reference=reference if keep_pixels else None,
                        predicted=predicted if keep_pixels else None,
                    )
                )
    return results


def summarize(results: list[ImageResult], out_of_distribution: bool) -> dict[str, Any]:
    """Family summary: counts, DSC (median, mean, quartiles), HD95, QC pass rate, goal."""
    dsc = np.array([r.dsc for r in results])
    hd_px = np.array([r.hd95_px for r in results])
    hd_mm = np.array([np.nan if r.hd95_mm is None else r.hd95_mm for r in results])
    qc = np.array([r.qc_valid for r in results])
    median = float(np.median(dsc)) if dsc.size else float("nan")
    qc_rate = float(qc.mean()) if qc.size else float("nan")
    if out_of_distribution:
        met = median >= GOAL["ood_median_dsc"] and qc_rate >= GOAL["ood_qc_pass"]
    else:
        met = median >= GOAL["in_distribution_median_dsc"]
    finite = np.isfinite(hd_px)
    return {
        "n_images": int(dsc.size),
        "dsc_median": median,
        "dsc_mean": float(dsc.mean()) if dsc.size else float("nan"),
        "dsc_q1": float(np.percentile(dsc, 25)) if dsc.size else float("nan"),
        "dsc_q3": float(np.percentile(dsc, 75)) if dsc.size else float("nan"),
        "hd95_px_median": float(np.median(hd_px)) if dsc.size else float("nan"),
        "hd95_mm_median": float(np.nanmedian(hd_mm)) if np.isfinite(hd_mm).any() else None,
        "empty_predictions": int((~finite).sum()),
        "qc_pass": qc_rate,
        "reference_qc_pass": float(np.mean([r.reference_qc_valid for r in results])),
        "out_of_distribution": out_of_distribution,
        "goal_met": bool(met),
    }


def markdown(rows: dict[str, dict[str, dict]], context: dict[str, Any]) -> str:
    """The report: one table per artifact, one row per family, the goal beside it."""
    lines = [
        "# Out-of-distribution myocardium segmentation",
        "",
        f"Created {context.get('created_utc', '')}; {context.get('elapsed_s', 0):.0f} s. "
        f"Goal: out-of-distribution families median DSC >= {GOAL['ood_median_dsc']} "
        f"and >= {100 * GOAL['ood_qc_pass']:.0f} % of predictions passing the shape QC; in "
        f"distribution median DSC >= {GOAL['in_distribution_median_dsc']}.",
        "",
    ]
    for artifact, families in rows.items():
        lines += [
            f"## {artifact}",
            "",
            "| family | images | DSC median [Q1, Q3] | DSC mean | HD95 median px (mm) | empty "
            "| QC pass | goal |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for family, s in families.items():
            mm = f" ({s['hd95_mm_median']:.1f})" if s["hd95_mm_median"] is not None else ""
            lines.append(
                f"| {family} | {s['n_images']} | {s['dsc_median']:.3f} [{s['dsc_q1']:.3f}, "
                f"{s['dsc_q3']:.3f}] | {s['dsc_mean']:.3f} | {s['hd95_px_median']:.1f}{mm} | "
                f"{s['empty_predictions']} | {100 * s['qc_pass']:.1f} % | "
                f"{'met' if s['goal_met'] else 'not met'} |"
            )
        lines.append("")
    lines += ["Files:", ""] + [f"- {k}: {v}" for k, v in context.get("files", {}).items()]
    return "\n".join(lines) + "\n"


def example_figure(results: dict[str, list[ImageResult]], path: str | os.PathLike) -> Path:
    """Worst, median and best image (by DSC) of every family: reference contour green,
    prediction red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f, r in results.items() if r]
    fig, axes = plt.subplots(len(families), 3, figsize=(7.5, 2.6 * len(families)), squeeze=False)
    for row, family in zip(axes, families, strict=True):
        ordered = sorted(results[family], key=lambda r: r.dsc)
        picks = [ordered[0], ordered[len(ordered) // 2], ordered[-1]]
        for ax, result, label in zip(row, picks, ("worst", "median", "best"), strict=True):
            ax.imshow(result.image, cmap="gray")
            ax.contour(result.reference, [0.5], colors="lime", linewidths=0.8)
            if result.predicted.any():
                ax.contour(result.predicted, [0.5], colors="red", linewidths=0.8)
            qc = "QC ok" if result.qc_valid else "QC fail"
            ax.set_title(f"{family}: {label}\nDSC {result.dsc:.2f}, {qc}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)


def write_report(
    results: dict[str, dict[str, list[ImageResult]]],
    context: dict[str, Any],
    out_dir: str | os.PathLike,
) -> tuple[dict, dict[str, Path]]:
    """Write ``report.md``, ``metrics.json`` (summaries and per-image rows) and
    ``figures/myocardium_ood_examples.png`` (first artifact) into ``out_dir``."""
    out = Path(out_dir)
    rows = {
        artifact: {f: summarize(r, f != IN_DISTRIBUTION) for f, r in families.items() if r}
        for artifact, families in results.items()
    }
    pixels = ("image", "reference", "predicted")
    per_image = {
        artifact: {
            f: [{k: v for k, v in r.__dict__.items() if k not in pixels} for r in res]
            for f, res in families.items()
        }
        for artifact, families in results.items()
    }
    metrics = {"task": "myocardium_ood", **context, "goal": GOAL, "families": rows,
               "images": per_image}  # fmt: skip
    files = {"metrics": out / "metrics.json", "report": out / "report.md"}
    with atomic_write(files["metrics"]) as tmp:
        tmp.write_text(json.dumps(metrics, indent=1, default=float))
    with atomic_write(files["report"]) as tmp:
        tmp.write_text(markdown(rows, context))
    first = next(iter(results.values()), {})
    if first:
        files["examples"] = example_figure(first, out / "figures" / "myocardium_ood_examples.png")
    return metrics, files
