"""Inline CPU runtime: load an exported artifact in plain torch and run the AIF pipeline.

Importable with torch, NumPy and SciPy only (no Lightning, Hydra or W&B); h5py and matplotlib are
imported by the command line (``python -m exports aif ...``) only.
"""

from deployment.artifact import Artifact, ArtifactError, load_artifact, read_metadata
from exports.aif_pipeline import (
    AIFCase,
    AIFInputError,
    AIFPipeline,
    AIFResult,
    CaseFailure,
    validate_aif_input,
)

__all__ = [
    "AIFCase",
    "AIFInputError",
    "AIFPipeline",
    "AIFResult",
    "Artifact",
    "ArtifactError",
    "CaseFailure",
    "load_artifact",
    "read_metadata",
    "validate_aif_input",
]
