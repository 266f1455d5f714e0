"""Scanner-side AIF pipeline: raw series -> LV mask -> AIF curve -> first-pass features.

For one motion-corrected series float ``[T, RO, E1]`` (PD frames first), its frame times
``times_s`` [T] in seconds and ``n_pd_frames``:

1. the training preprocessing (``quantification.aif_preprocessing.preprocess_aif_series`` with
   the parameters stored in the artifact): [n_frames, ro_size, e1_size], max-normalised;
2. the model: probabilities [C, ro_size, e1_size];
3. the threshold rule of method.md §A6 (``quantification.lv_mask.masks_from_probabilities``): labels
   0 background, 1 LV, 2 RV (3CS);
4. back to the input geometry (``restore_geometry``: padding removed, cropped pixels = 0);
5. the AIF (``quantification.aif_curve.aif_curve``: brightest 15 % of the LV at the frame of
   peak LV enhancement, averaged in every frame) on the 0.5 s grid, over the **whole**
   acquisition (not only the network's first ``n_frames`` grid points) and in **coil-corrected
   signal units**: the SR frames resampled to the grid and divided by the normalised coil map,
   exactly as in preprocessing but without the final division by the image maximum. That is the
   unit of the myocardial signal of the same series, which perfusion mapping divides by the AIF;
   the network's max-normalisation depends on the brightest pixel anywhere in the crop and would
   only rescale the curve by an arbitrary per-case factor (``scale`` is kept, so
   ``aif / scale`` is the curve in network-input units);
6. features (``quantification.aif_curve.aif_features``): foot, peak and valley times in seconds
   from the first SR frame, first-pass duration, peak value and AUC (in the AIF's unit).

Options: ``tta=True`` averages the probabilities of the series and its three flips (RO, E1,
both; test-time augmentation, 4 network passes in one batch). When the model finds no LV, the
error says why (``quantification.enhancing_pools``: nothing enhances, one pool only, a bolus
after the window, or pools the model did not recognise); with ``fallback="legacy"`` the legacy
detector of method.md §A3 is tried instead, and a mask it finds is returned with ``mask_source =
"legacy"`` so that outputs flag it.

Imports torch, NumPy and SciPy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from deployment.artifact import AIF_TASK, Artifact, ArtifactError
from quantification.aif_curve import AIFFeatures, aif_features, aif_of_pixels
from quantification.aif_preprocessing import (
    AIFPreprocessing,
    PreprocessedAIF,
    coil_sensitivity_map,
    preprocess_aif_series,
    resample_to_grid,
    restore_geometry,
)
from quantification.enhancing_pools import enhancing_pools, no_lv_reason
from quantification.legacy_aif_detector import detect_lv_legacy
from quantification.lv_mask import (
    LABEL_LV,
    LABEL_RV,
    THRESHOLD_RULE,
    masks_from_probabilities,
)

__all__ = [
    "E1_RANGE",
    "T_RANGE",
    "AIFCase",
    "AIFInputError",
    "AIFPipeline",
    "AIFResult",
    "CaseFailure",
    "FLIPS",
    "flip_averaged_probabilities",
    "validate_aif_input",
]

T_RANGE = (40, 200)
"""Accepted number of frames T (PD frames included), inclusive."""
E1_RANGE = (40, 64)
"""Accepted phase-encode size E1 in pixels, inclusive."""


class AIFInputError(ValueError):
    """A series the pipeline refuses (rank, size, NaN/Inf, times, n_pd_frames, no LV found)."""


@dataclass(frozen=True)
class AIFCase:
    """One input series.

    Attributes:
        case_id: name used in outputs and error messages.
        series: float [T, RO, E1], PD frames first.
        times_s: [T] frame times in seconds, strictly increasing.
        n_pd_frames: leading proton-density frames (0: no coil correction).
    """

    case_id: str
    series: np.ndarray
    times_s: np.ndarray
    n_pd_frames: int


@dataclass(frozen=True)
class AIFResult:
    """What the pipeline returns for one series (pixel arrays in the input geometry).

    Attributes:
        case_id: the case name.
        mask: uint8 [RO, E1]: 0 background, 1 LV, 2 RV (RV only for 3CS models).
        probability: float32 [C, RO, E1] model output (C = 1: P(LV); C = 3: background/LV/RV);
            pixels the network did not see (cropped away) are 0.
        aif: float32 [N] AIF in coil-corrected signal units on the grid ``grid_s``.
        grid_s: float32 [N] seconds from the first SR frame, step ``grid_step_s`` (0.5 s).
        features: first-pass features of ``aif`` (times on the ``grid_s`` clock).
        scale: the image maximum divided out by the preprocessing (``aif / scale`` is in
            network-input units).
        peak_lv_frame: index into ``grid_s`` of peak mean LV signal.
        peak_rv_frame: index of peak mean RV signal (3CS), else None.
        mask_source: ``model``, or ``legacy`` when the model found no LV and the legacy
            detector's mask is used (``fallback="legacy"``).
        note: why the model found no LV, when the legacy detector stepped in; else "".
    """

    case_id: str
    mask: np.ndarray
    probability: np.ndarray
    aif: np.ndarray
    grid_s: np.ndarray
    features: AIFFeatures
    scale: float
    peak_lv_frame: int
    peak_rv_frame: int | None
    mask_source: str = "model"
    note: str = ""


@dataclass(frozen=True)
class CaseFailure:
    """A case the pipeline could not process, with the reason (an exception message)."""

    case_id: str
    error: str


def validate_aif_input(series: np.ndarray, times_s: np.ndarray, n_pd_frames: int) -> None:
    """Refuse inputs outside what the pipeline supports, with a message saying what is wrong.

    Accepted: ``series`` real [T, RO, E1] with T in :data:`T_RANGE`, E1 in :data:`E1_RANGE`,
    RO >= 1, all finite; ``times_s`` [T] finite; ``n_pd_frames`` an int in [0, T - 2] (at least
    two SR frames). Time ordering and signal are checked by the preprocessing.

    Raises:
        AIFInputError: the first violated condition.
    """
    if series.ndim != 3:
        raise AIFInputError(f"series must be [T, RO, E1] (rank 3), got shape {series.shape}")
    if 0 in series.shape:
        raise AIFInputError(f"series is empty: shape {series.shape}")
    if not (np.issubdtype(series.dtype, np.floating) or np.issubdtype(series.dtype, np.integer)):
        raise AIFInputError(f"series must be real numbers, got dtype {series.dtype}")
    n_t, _, e1 = series.shape
    if not T_RANGE[0] <= n_t <= T_RANGE[1]:
        raise AIFInputError(f"series has T={n_t} frames; supported {T_RANGE[0]}-{T_RANGE[1]}")
    if not E1_RANGE[0] <= e1 <= E1_RANGE[1]:
        raise AIFInputError(f"series has E1={e1} pixels; supported {E1_RANGE[0]}-{E1_RANGE[1]}")
    if not np.isfinite(series).all():
        n_bad = int(series.size - np.count_nonzero(np.isfinite(series)))
        raise AIFInputError(f"series contains {n_bad} NaN/Inf values")
    if times_s.shape != (n_t,):
        raise AIFInputError(f"times_s must be [T={n_t}], got shape {times_s.shape}")
    if not np.isfinite(times_s).all():
        raise AIFInputError("times_s contains NaN or Inf")
    if isinstance(n_pd_frames, bool) or not isinstance(n_pd_frames, int | np.integer):
        raise AIFInputError(f"n_pd_frames must be an int, got {n_pd_frames!r}")
    if not 0 <= n_pd_frames <= n_t - 2:
        raise AIFInputError(f"n_pd_frames must be in [0, T-2={n_t - 2}], got {n_pd_frames}")


def aif_preprocessing_of(artifact: Artifact) -> AIFPreprocessing:
    """The preprocessing an AIF artifact was trained with, after checking that it is an AIF model
    exported with the threshold rule this runtime implements (``quantification.lv_mask``).

    Raises:
        ArtifactError: another task, or another threshold rule.
    """
    metadata = artifact.metadata
    if metadata["task"] != AIF_TASK:
        raise ArtifactError(f"{artifact.path}: task {metadata['task']!r}, expected {AIF_TASK!r}")
    if metadata["threshold_rule"] != THRESHOLD_RULE:
        raise ArtifactError(
            f"{artifact.path}: exported with threshold rule {metadata['threshold_rule']}, but "
            f"this runtime implements {THRESHOLD_RULE}"
        )
    return AIFPreprocessing(**metadata["preprocessing"])


FLIPS = ((), (-2,), (-1,), (-2, -1))
"""Test-time augmentation: the series as it is and flipped along RO, E1 and both."""


def flip_averaged_probabilities(
    probabilities: Callable[[np.ndarray], np.ndarray], images: np.ndarray
) -> np.ndarray:
    """Flip test-time augmentation: the mean of ``probabilities`` over the preprocessed series
    float32 [B, n_frames, ro, e1] and its :data:`FLIPS`, each output flipped back; float32
    [B, C, ro, e1]. One network call of 4B series.

    Example:
        >>> identity = lambda x: x[:, :1] / (1 + x[:, :1])
        >>> images = np.random.default_rng(0).random((2, 3, 4, 5), dtype=np.float32)
        >>> bool(np.allclose(flip_averaged_probabilities(identity, images), identity(images)))
        True
    """
    batch = np.concatenate([np.flip(images, axes) if axes else images for axes in FLIPS])
    out = np.split(probabilities(np.ascontiguousarray(batch)), len(FLIPS))
    back = [np.flip(p, axes) if axes else p for p, axes in zip(out, FLIPS, strict=True)]
    return np.mean(back, axis=0).astype(np.float32)


class AIFPipeline:
    """The AIF pipeline around one resident artifact; call :meth:`run` once per series.

    Args:
        artifact: from :func:`exports.load_artifact` (its preprocessing parameters are used).
        tta: average the probabilities over the series and its flips along RO, E1 and both.
        fallback: ``None``, or ``"legacy"``: when the model finds no LV, use the legacy detector.

    Example:
        >>> pipeline = AIFPipeline(load_artifact("aif_monai_basic_unet3cs"))  # doctest: +SKIP
        >>> result = pipeline.run(series, times_s, n_pd_frames=2)  # doctest: +SKIP
        >>> result.features.peak_s, result.mask.shape  # doctest: +SKIP
    """

    def __init__(self, artifact: Artifact, tta: bool = False, fallback: str | None = None) -> None:
        if fallback not in (None, "legacy"):
            raise ValueError(f"fallback must be None or 'legacy', got {fallback!r}")
        self.artifact = artifact
        self.params = aif_preprocessing_of(artifact)
        self.tta = tta
        self.fallback = fallback

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Model output float32 [C, ro, e1] for one preprocessed series [n_frames, ro, e1]; with
        ``tta`` the mean over the series and its flips (each flipped back)."""
        if not self.tta:
            return self.artifact.probabilities(image)
        return flip_averaged_probabilities(self.artifact.probabilities, image[None])[0]

    def _no_lv(self, series: np.ndarray, times_s: np.ndarray, n_pd: int) -> tuple[np.ndarray, str]:
        """The legacy detector's mask (with the reason the model failed), or raise with it."""
        window_s = self.params.n_frames * self.params.grid_step_s
        reason = no_lv_reason(enhancing_pools(series, times_s, n_pd), window_s)
        if self.fallback == "legacy":
            legacy = detect_lv_legacy(series, times_s, n_pd)
            if legacy.found:
                return legacy.labels.astype(np.uint8), reason
            reason += f"; the legacy detector found none either ({legacy.reason})"
        raise AIFInputError(f"the model found no LV blood pool: {reason}")

    def signal_on_grid(
        self,
        series: np.ndarray,
        times_s: np.ndarray,
        n_pd_frames: int,
        pixels: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Coil-corrected SR frames of the whole acquisition on the ``grid_step_s`` grid.

        Args:
            series, times_s, n_pd_frames: as for :meth:`run`.
            pixels: bool [RO, E1]: only these pixels (in raster order); None: every pixel.

        Returns:
            (float32 [N, RO, E1], or [N, n_pixels] with ``pixels``, in coil-corrected signal
            units; float32 [N] seconds from the first SR frame). A pixel's values do not
            depend on ``pixels``.
        """
        sr = series[n_pd_frames:] if pixels is None else series[n_pd_frames:, pixels]
        sr, grid = resample_to_grid(sr, times_s[n_pd_frames:], self.params.grid_step_s)
        if n_pd_frames > 0:
            sens = coil_sensitivity_map(
                series[:n_pd_frames], self.params.coil_smoothing_px, self.params.coil_floor
            )
            sr /= sens if pixels is None else sens[pixels]
        return sr, (grid - grid[0]).astype(np.float32)

    def run(
        self, series: np.ndarray, times_s: np.ndarray, n_pd_frames: int, case_id: str = "case"
    ) -> AIFResult:
        """Process one series (see the module docstring).

        Args:
            series: float [T, RO, E1], PD frames first; T 40-200, E1 40-64.
            times_s: [T] frame times in seconds, strictly increasing.
            n_pd_frames: leading proton-density frames, 0 <= n_pd_frames <= T - 2.
            case_id: name carried into the result and error messages.

        Raises:
            AIFInputError: invalid input, or the model finds no LV (no AIF can be measured).
        """
        series, times_s = np.asarray(series), np.asarray(times_s)
        validate_aif_input(series, times_s, n_pd_frames)
        n_pd = int(n_pd_frames)
        try:
            pre: PreprocessedAIF = preprocess_aif_series(series, times_s, n_pd, self.params)
        except ValueError as exc:
            raise AIFInputError(str(exc)) from exc
        prob = self.probabilities(pre.image)
        labels = masks_from_probabilities(prob, self.artifact.n_classes)
        mask = restore_geometry(labels, pre).astype(np.uint8)
        source, note = "model", ""
        series = series.astype(np.float32)
        if not (mask == LABEL_LV).any():
            mask, note = self._no_lv(series, times_s, n_pd)
            source = "legacy"
        # the signal of the LV and RV pixels only: the AIF and the peak frames need no other
        pools = mask != 0
        signal, grid_s = self.signal_on_grid(series, times_s, n_pd, pixels=pools)
        lv, rv = signal[:, mask[pools] == LABEL_LV], signal[:, mask[pools] == LABEL_RV]
        aif = aif_of_pixels(lv)
        return AIFResult(
            case_id=case_id,
            mask=mask,
            probability=restore_geometry(prob, pre).astype(np.float32),
            aif=aif,
            grid_s=grid_s,
            features=aif_features(aif, step_s=self.params.grid_step_s),
            scale=pre.scale,
            peak_lv_frame=int(np.argmax(lv.mean(axis=1))),
            peak_rv_frame=int(np.argmax(rv.mean(axis=1))) if rv.size else None,
            mask_source=source,
            note=note,
        )

    def run_many(self, cases: Iterable[AIFCase | CaseFailure]) -> Iterator[AIFResult | CaseFailure]:
        """Process cases one by one; a case that fails becomes a :class:`CaseFailure`.

        Only input problems (``ValueError``, which includes :class:`AIFInputError`) are turned
        into failures; anything else (a broken model, out of memory) still stops the batch.
        A :class:`CaseFailure` in the input (e.g. a case that could not be read) is passed on.
        """
        for case in cases:
            if isinstance(case, CaseFailure):
                yield case
                continue
            try:
                yield self.run(case.series, case.times_s, case.n_pd_frames, case.case_id)
            except ValueError as exc:
                yield CaseFailure(case.case_id, f"{type(exc).__name__}: {exc}")
