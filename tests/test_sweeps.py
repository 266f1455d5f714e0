"""Hydra multiruns as the README runs them: one dir, metrics.json and W&B run per job; summaries.

The multiruns run ``train.py`` in-process with a command line (as ``python train.py -m ...``),
on the tiny ResUNet and phantom set of ``tests/conftest.py``, one batch per stage.
"""

from __future__ import annotations

import csv
import json
import math
import runpy
import statistics
import struct
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from wandb.proto import wandb_internal_pb2

import summarize_runs
from sweeps.run_summary import find_runs, summarize, to_csv, to_markdown, write_run_record
from tests.conftest import ROOT, TINY, compose_train_config

ONE_BATCH = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "export=none",
    "callbacks.prediction_figure=null",
]


def run_multirun(
    overrides: list[str], sweep_dir: Path, data_dir: Path, monkeypatch, shrink=tuple(ONE_BATCH)
) -> int:
    """``python train.py -m <overrides> <shrink>`` in this process; returns the exit status."""
    argv = [str(ROOT / "train.py"), "-m", *overrides, *shrink]
    argv += [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={sweep_dir / 'artifacts'}"]
    argv += [f"hydra.sweep.dir={sweep_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    GlobalHydra.instance().clear()
    try:
        runpy.run_path(argv[0], run_name="__main__")  # as `python train.py`
    except SystemExit as stop:  # Hydra exits 1 after the sweep when a job failed
        return int(stop.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return 0


def read_offline_wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The protobuf ``Record``s of one offline W&B run file (``run-*.wandb``).

    The file is a LevelDB-style log (7-byte header, 32 KiB blocks, records with a 7-byte
    header: CRC, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) of protobuf ``Record``s.
    """
    data, pos, chunks, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        chunks = chunk if kind in (1, 2) else chunks + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records


def read_offline_wandb_runs(run_dir: Path) -> list[dict]:
    """Name, group, tags, job type, exit record and logged artifacts of each offline W&B run in
    ``<run_dir>/wandb``, in the order they started."""
    paths = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return [_offline_run_summary(read_offline_wandb_records(path)) for path in paths]


def read_offline_wandb_run(run_dir: Path) -> dict:
    """The one offline W&B run in ``<run_dir>/wandb`` (:func:`read_offline_wandb_runs`)."""
    (run,) = read_offline_wandb_runs(run_dir)
    return run


def _offline_run_summary(records: list[wandb_internal_pb2.Record]) -> dict:
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    return {
        "name": run.display_name,
        "group": run.run_group,
        "tags": list(run.tags),
        "job_type": run.job_type,
        "finished": bool(exits),
        "artifacts": [
            {
                "name": a.name,
                "type": a.type,
                "aliases": sorted(a.aliases),
                "metadata": json.loads(a.metadata or "{}"),
                "files": [c.local_path for c in a.manifest.contents],
            }
            for a in artifacts
        ],
    }


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_model_seed_multirun_gives_one_dir_and_one_wandb_run_per_job(
    tmp_path, data_dir, monkeypatch, offline_wandb, capsys
):
    sweep = tmp_path / "sweep"
    overrides = [*TINY, "logger=wandb", "model=resunet2cs,resunet3cs", "seed=1,2"]
    assert run_multirun(overrides, sweep, data_dir, monkeypatch) == 0

    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    runs = [read_offline_wandb_run(job) for job in jobs]
    records = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert [(r["model"], r["seed"]) for r in records] == [
        ("resunet2cs", 1),
        ("resunet2cs", 2),
        ("resunet3cs", 1),
        ("resunet3cs", 2),
    ]
    for run, record in zip(runs, records, strict=True):
        assert run["group"] == "aif_lv_detection" and run["finished"]
        assert run["tags"] == [record["model"], f"seed{record['seed']}"]
    assert len({run["name"] for run in runs}) == 4, "one distinct W&B run name per job"

    assert summarize_runs.main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    table = (sweep / "summary.md").read_text()
    assert table in printed and "| model | n | test/lv_dice |" in table
    dice = {
        model: [r["metrics"]["test/lv_dice"] for r in records if r["model"] == model]
        for model in ("resunet2cs", "resunet3cs")
    }
    for model, values in dice.items():
        cell = f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
        assert f"| {model} | 2 | {cell} |" in table
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["model"] for row in rows] == ["resunet2cs", "resunet3cs"]
    assert float(rows[0]["test/lv_dice_mean"]) == pytest.approx(statistics.mean(dice["resunet2cs"]))
    assert float(rows[1]["test/lv_dice_sd"]) == pytest.approx(statistics.stdev(dice["resunet3cs"]))
    assert rows[0]["test/rv_dice_mean"] == "" and rows[1]["test/rv_dice_mean"]  # 2CS has no RV


def test_a_failed_job_does_not_break_the_rest_of_the_sweep(
    tmp_path, data_dir, monkeypatch, offline_wandb, capsys
):
    sweep = tmp_path / "sweep"
    # Adam refuses a negative learning rate when the fit starts: job 0 fails inside trainer.fit
    overrides = [*TINY, "logger=wandb", "model.optimizer.lr=-1.0,0.001", "seed=3"]
    assert run_multirun(overrides, sweep, data_dir, monkeypatch) == 1

    failed, good = sweep / "0", sweep / "1"
    assert not (failed / "metrics.json").exists() and (good / "metrics.json").exists()
    assert read_offline_wandb_run(failed)["finished"], "the failed job's W&B run was closed"
    assert read_offline_wandb_run(good)["finished"]
    records, failed_jobs = find_runs([sweep])
    assert [r.run_dir for r in records] == [good] and failed_jobs == [failed]
    assert summarize_runs.main([str(sweep)]) == 0
    assert f"1 failed job(s) without metrics: {failed}" in capsys.readouterr().out


def test_optuna_preset_runs_two_trials_and_keeps_the_best(tmp_path, data_dir, monkeypatch):
    sweep = tmp_path / "optuna"
    tiny_search = [
        "hparams_search=aif_optuna",
        "hydra.sweeper.n_trials=2",
        # the same search keys over tiny values (merged into the preset's search space)
        "hydra.sweeper.params={model.net.input_planes:'choice(4,8)',"
        "arch.filters_level1:'choice(4,8)',arch.filters_level2:'choice(8,12)',"
        "arch.modules_level1:'choice(1)',arch.modules_level2:'choice(1)'}",
    ]
    not_arch = [o for o in TINY if not o.startswith("model.net.")]
    assert run_multirun([*not_arch, *tiny_search], sweep, data_dir, monkeypatch) == 0

    records, failed = find_runs([sweep])
    assert len(records) == 2 and not failed
    for record in records:
        over = record.overrides
        assert 1e-4 <= float(over["model.optimizer.lr"]) <= 3e-3
        ckpt = next((record.run_dir / "checkpoints").glob("epoch*.ckpt"))
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        widths = {v.shape[0] for k, v in state.items() if k.endswith(".weight") and v.ndim == 4}
        assert int(over["arch.filters_level1"]) in widths
        assert int(over["arch.filters_level2"]) in widths
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(r.metrics["val/lv_dice"] for r in records))


def test_optuna_preset_composes_with_the_paper_search_space(tmp_path):
    cfg = compose_train_config(["hparams_search=aif_optuna"], output_dir=tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {
        "model.optimizer.lr",
        "model.net.input_planes",
        "arch.filters_level1",
        "arch.filters_level2",
        "arch.modules_level1",
        "arch.modules_level2",
    }
    assert cfg.optimized_metric == "val/lv_dice"
    assert list(cfg.model.net.planes) == [128, 128]  # defaults = the paper's choice
    assert list(cfg.model.net.modules_per_level) == [4, 4]


def test_architecture_grid_is_the_papers_45_runs(tmp_path):
    cfg = compose_train_config(["experiment=aif_arch_grid"], output_dir=tmp_path)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    assert len(jobs) == 45 and len({tuple(j) for j in jobs}) == 45
    paper = [
        "model.net.planes=[128,128]",
        "model.net.modules_per_level=[4,4]",
        "model.net.input_planes=96",
    ]
    assert sum(set(job) == set(paper) for job in jobs) == 1
    # every job composes (a few built and counted would be slow; composing checks the keys)
    for job in jobs[::11]:
        job_cfg = compose_train_config(["experiment=aif_arch_grid", *job], output_dir=tmp_path)
        assert job_cfg.experiment_name == "aif_arch_grid"


def test_slurm_launcher_preset_composes(tmp_path):
    cfg = compose_train_config(["hydra/launcher=slurm"], output_dir=tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.timeout_min == 120 and launcher.gpus_per_node == 1
    assert "partition" in launcher and "account" in launcher


def test_summary_pools_repeats_and_reports_mean_and_sd(tmp_path):
    values = {("2cs", 1): 0.80, ("2cs", 2): 0.90, ("2cs", 3): 0.70, ("3cs", 1): 0.95}
    for i, ((model, seed), dice) in enumerate(values.items()):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        metrics = {"test/lv_dice": dice, "val/lv_dice": math.nan}
        write_run_record(job, metrics, [f"model={model}", f"seed={seed}", "x=1"], seed, model, None)
    (tmp_path / "9" / ".hydra").mkdir(parents=True)  # a job that died before writing metrics

    records, failed = find_runs([tmp_path])
    keys, summaries = summarize(records, ["test/lv_dice", "val/lv_dice"])
    assert keys == ["model"] and failed == [tmp_path / "9"]
    two, three = summaries
    assert (two.config, two.n_runs) == ({"model": "2cs"}, 3)
    assert two.mean["test/lv_dice"] == pytest.approx(0.8)
    assert two.sd["test/lv_dice"] == pytest.approx(0.1)
    assert math.isnan(three.sd["test/lv_dice"]) and math.isnan(two.mean["val/lv_dice"])
    markdown = to_markdown(keys, summaries, ["test/lv_dice"])
    assert "| 2cs | 3 | 0.800 ± 0.100 |" in markdown and "| 3cs | 1 | 0.950 |" in markdown
    assert to_csv(keys, summaries, ["test/lv_dice"]).splitlines()[0] == (
        "model,n_runs,test/lv_dice_mean,test/lv_dice_sd"
    )
    # pooling folds as well as seeds: one configuration per model
    assert [s.n_runs for s in summarize(records, ["test/lv_dice"], ["seed", "x"])[1]] == [3, 1]


def test_summary_command_explains_an_empty_or_missing_directory(tmp_path, capsys):
    assert summarize_runs.main([str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    assert summarize_runs.main([str(tmp_path / "nope")]) == 2
    assert "no such run or sweep directory" in capsys.readouterr().err
    assert (ROOT / "summarize_runs.py").exists()
