"""The networks an AIF evaluation compares: exported artifacts and Lightning checkpoints.

A *predictor* maps preprocessed series to probabilities exactly like
:meth:`deployment.artifact.Artifact.probabilities`, so the evaluation runs every network through the
same preprocessing, threshold rule and geometry restoration as the scanner runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from deployment.artifact import load_artifact
from exports.aif_pipeline import aif_preprocessing_of, flip_averaged_probabilities
from quantification.aif_preprocessing import AIFPreprocessing


class AIFPredictor(Protocol):
    """A network as the evaluation sees it."""

    name: str  # column name in the report (e.g. "resunet3cs")
    source: str  # file it was loaded from
    n_classes: int  # 2 (2CS, one sigmoid channel) or 3 (3CS softmax)
    preprocessing: AIFPreprocessing

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """float32 [B, C, ro, e1] for preprocessed series float32 [B, n_frames, ro, e1]."""
        ...


@dataclass(frozen=True)
class ArtifactPredictor:
    """An exported TorchScript artifact (``exports.load_artifact``: sha256 verified)."""

    name: str
    source: str
    n_classes: int
    preprocessing: AIFPreprocessing
    artifact: object

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.artifact.probabilities(images)  # type: ignore[attr-defined]


def artifact_predictor(path: str | os.PathLike, name: str | None = None) -> ArtifactPredictor:
    """Load an AIF artifact; named by its metadata's ``model`` (e.g. ``resunet2cs``) by default."""
    artifact = load_artifact(path, expected_task="aif_lv_detection")
    return ArtifactPredictor(
        name=name or str(artifact.metadata.get("model") or Path(path).stem),
        source=str(path),
        n_classes=artifact.n_classes,
        preprocessing=aif_preprocessing_of(artifact),
        artifact=artifact,
    )


@dataclass(frozen=True)
class FlipAveragedPredictor:
    """Another predictor with the runtime's test-time augmentation (``AIFPipeline(tta=True)``,
    ``--tta``): probabilities averaged over the series and its flips."""

    name: str
    source: str
    n_classes: int
    preprocessing: AIFPreprocessing
    inner: AIFPredictor

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return flip_averaged_probabilities(self.inner.probabilities, images)


def with_tta(predictor: AIFPredictor) -> FlipAveragedPredictor:
    """``predictor`` with flip test-time augmentation, named ``<name>+tta``."""
    return FlipAveragedPredictor(
        name=f"{predictor.name}+tta",
        source=predictor.source,
        n_classes=predictor.n_classes,
        preprocessing=predictor.preprocessing,
        inner=predictor,
    )


@dataclass(frozen=True)
class CheckpointPredictor:
    """A Lightning checkpoint of ``SegmentationModule`` (network rebuilt from the model config)."""

    name: str
    source: str
    n_classes: int
    preprocessing: AIFPreprocessing
    module: torch.nn.Module

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(images, dtype=torch.float32)
        with torch.inference_mode():
            return self.module.probabilities(self.module(x)).numpy()  # type: ignore[operator]


def checkpoint_predictor(
    module: torch.nn.Module,
    ckpt_path: str | os.PathLike,
    preprocessing: AIFPreprocessing,
    name: str,
) -> CheckpointPredictor:
    """Load ``ckpt_path``'s ``state_dict`` into ``module`` (built from the same model config).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: the checkpoint does not fit the configured model (names the missing keys).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found (ckpt_path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise ValueError(f"{path}: expected a Lightning checkpoint with a 'state_dict' key")
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: the checkpoint does not fit the configured model (pass the model=... it "
            f"was trained with): {exc}"
        ) from exc
    module.eval()
    return CheckpointPredictor(
        name=name,
        source=str(path),
        n_classes=int(module.n_classes),  # type: ignore[arg-type]
        preprocessing=preprocessing,
        module=module,
    )
