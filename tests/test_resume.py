"""Faults: SIGKILLed training resumes from last.ckpt; a SIGKILLed export writes nothing.

Both kill a real ``python`` subprocess (no chance to clean up), then check what is on disk.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from omegaconf import open_dict

from tests.conftest import ROOT, TINY, compose_train_config
from train import train

# Tiny model, but 6 training steps per epoch (12 training cases, batch 2) so that an epoch lasts
# long enough to be interrupted in its middle; every step is logged to CSV at once.
RESUMABLE = [
    *(o for o in TINY if not o.startswith(("data.batch_size", "logger"))),
    "data.batch_size=2",
    "logger=csv",
    "+logger.csv.flush_logs_every_n_steps=1",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "test=false",
    "export=none",
    "callbacks.prediction_figure=null",
]
STEPS_PER_EPOCH = 6


def logged_steps(run_dir: Path) -> list[tuple[int, int]]:
    """(epoch, step) of every training-loss row the CSV logger has flushed so far."""
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with path.open() as f:
            rows += [
                (int(r["epoch"]), int(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")
            ]
    return rows


def wait_for(condition, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    start = time.monotonic()
    while not condition():
        if process.poll() is not None:
            error = process.stderr.read()[-3000:] if process.stderr else ""
            raise AssertionError(f"training ended (exit {process.returncode}) first:\n{error}")
        if time.monotonic() - start > timeout_s:
            process.kill()
            raise AssertionError("timed out waiting for the training to reach the kill point")
        time.sleep(0.01)


def test_sigkilled_training_resumes_from_last_ckpt_losing_only_the_current_epoch(
    tmp_path, data_dir
):
    run_dir = tmp_path / "run"
    paths = [f"paths.data_dir={data_dir}", f"paths.artifacts_dir={tmp_path / 'artifacts'}"]
    command = [sys.executable, str(ROOT / "train.py"), *RESUMABLE, *paths]
    command += ["trainer.max_epochs=3", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:  # kill once the second epoch (epoch 1) has logged its first step
        wait_for(lambda: any(epoch == 1 for epoch, _ in logged_steps(run_dir)), process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)  # complete and loadable despite the kill
    assert state["epoch"] == 0 and state["global_step"] == STEPS_PER_EPOCH, (
        "last.ckpt holds the end of epoch 0: only the epoch in progress is lost"
    )
    killed_at = max(step for _, step in logged_steps(run_dir))
    assert STEPS_PER_EPOCH <= killed_at < 2 * STEPS_PER_EPOCH - 1  # killed inside epoch 1

    resumed = compose_train_config(
        [*RESUMABLE, *paths, "trainer.max_epochs=3", f"ckpt_path={last}"],
        output_dir=tmp_path / "resumed",
    )
    with open_dict(resumed):  # as in `python train.py`: Hydra's own node is not in the job config
        del resumed["hydra"]
    train(resumed)
    final = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == 2 and final["global_step"] == 3 * STEPS_PER_EPOCH
    resumed_steps = [step for _, step in logged_steps(tmp_path / "resumed")]
    assert min(resumed_steps) >= STEPS_PER_EPOCH, "epoch 0 was not trained again"
    assert sorted({epoch for epoch, _ in logged_steps(tmp_path / "resumed")}) == [1, 2]


EXPORT_AND_HANG = textwrap.dedent(
    """
    import sys, time
    import torch
    import deployment.exporter as export
    from lightning_modules.networks.resunet import ResUNet

    def hang(path, **options):  # called on the complete temporary file, before its rename
        print("WRITTEN", flush=True)
        time.sleep(600)

    export.load_artifact = hang
    net = ResUNet(in_channels=64, n_outputs=3, input_planes=4, planes=[4, 4],
                  modules_per_level=[1, 1])
    preprocessing = {"grid_step_s": 0.5, "n_frames": 64, "ro_size": 64, "e1_size": 48}
    export.export_artifact(net, 3, torch.rand(2, 64, 64, 48), sys.argv[1],
                           {"model": "tiny", "preprocessing": preprocessing})
    """
)


def test_a_killed_export_leaves_the_previous_artifact_untouched(tmp_path):
    artifact = tmp_path / "artifacts" / "aif_resunet3cs.ts"
    artifact.parent.mkdir()
    artifact.write_bytes(b"previous artifact")
    process = subprocess.Popen(
        [sys.executable, "-c", EXPORT_AND_HANG, str(artifact)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.strip() == "WRITTEN", process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)

    assert artifact.read_bytes() == b"previous artifact"
    leftovers = [p.name for p in artifact.parent.iterdir() if p != artifact]
    # only the hidden temporary file of atomic_write is left; no loader ever opens it
    assert all(name.startswith(".aif_resunet3cs.ts.") for name in leftovers), leftovers
