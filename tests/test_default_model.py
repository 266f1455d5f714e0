"""The deployed default AIF model: one name that `make train` deploys and everything else loads.

Real exports of a tiny ResUNet promoted into a real artifact index, the composed `make train` and
`evaluate.py` configs, and the MRD server's command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from deployment.artifact_index import ARTIFACTS_DIR_ENV, ArtifactIndex
from deployment.default_model import DEFAULT_AIF_MODEL, deployed_default_aif_model
from exports.mrd_server import add_serve_parser
from tests.conftest import ROOT, compose_train_config
from tests.test_artifact_index import export_run


def test_make_train_deploys_the_default_name_and_evaluate_loads_it(tmp_path):
    cfg = compose_train_config([], output_dir=tmp_path)
    assert Path(cfg.export.artifact_path).name == f"{DEFAULT_AIF_MODEL}.ts"
    assert OmegaConf.load(ROOT / "conf" / "evaluate.yaml").artifact == DEFAULT_AIF_MODEL
    paper = compose_train_config(["model=resunet3cs"], output_dir=tmp_path)
    assert Path(paper.export.artifact_path).name == "aif_resunet3cs.ts"  # a name of its own


def test_the_default_resolves_through_the_index_and_follows_a_roll_back(tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    assert deployed_default_aif_model(artifacts) is None  # nothing deployed yet
    index = ArtifactIndex(artifacts)
    first = index.promote(export_run(tmp_path / "run0", 0, 0.91), name=DEFAULT_AIF_MODEL)
    second = index.promote(export_run(tmp_path / "run1", 1, 0.95), name=DEFAULT_AIF_MODEL)
    assert deployed_default_aif_model(artifacts) == second.path
    index.promote_version(DEFAULT_AIF_MODEL, first.version)
    assert deployed_default_aif_model(artifacts) == first.path

    monkeypatch.setenv(ARTIFACTS_DIR_ENV, str(artifacts))  # the scanner's artifacts directory
    serve = add_serve_parser(argparse.ArgumentParser().add_subparsers())
    assert serve.parse_args([]).aif_model == first.path
    assert serve.parse_args(["--aif-model", "other.ts"]).aif_model == Path("other.ts")
    monkeypatch.setenv(ARTIFACTS_DIR_ENV, str(tmp_path / "empty"))
    no_default = add_serve_parser(argparse.ArgumentParser().add_subparsers())
    assert no_default.parse_args([]).aif_model is None  # a server without AIF model still starts
