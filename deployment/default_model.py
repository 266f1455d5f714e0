"""The deployed default AIF model: the name ``make train`` deploys, resolved through the index.

``make train`` trains ``conf/train.yaml``'s model (MONAI's BasicUNet, 3CS; chosen by measurement,
docs/results_aif_default.md) and deploys it as ``artifacts/<DEFAULT_AIF_MODEL>.ts``. Whatever
runs "the deployed AIF model" without being given one (the MRD server, ``evaluate.py``'s config)
names it through this constant, so that the default network changes in one place; the name
resolves through the artifact index (:func:`deployment.artifact_index.resolve_artifact`) to the
deployed version, so a roll back (``python -m exports promote NAME@VERSION``) is followed too.
"""

from __future__ import annotations

import os
from pathlib import Path

from deployment.artifact_index import ArtifactIndexError, resolve_artifact

__all__ = ["DEFAULT_AIF_MODEL", "deployed_default_aif_model"]

DEFAULT_AIF_MODEL = "aif_monai_basic_unet3cs"  # the `make train` export: aif_<net><classes>cs


def deployed_default_aif_model(artifacts_dir: str | os.PathLike | None = None) -> Path | None:
    """The file of the deployed default AIF model, or ``None`` when none is deployed there.

    ``artifacts_dir``: default ``$INLINE_CMR_ARTIFACTS`` or ``<repository>/artifacts``.

    Example:
        >>> import tempfile
        >>> deployed_default_aif_model(tempfile.mkdtemp()) is None
        True
    """
    try:
        return resolve_artifact(DEFAULT_AIF_MODEL, artifacts_dir)
    except ArtifactIndexError:
        return None
