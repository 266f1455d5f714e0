"""Scale-out: ddp_sim (2 CPU processes over gloo, slow), the GPU preset's pieces, the benchmark.

There is no GPU in CI: ``trainer=gpu`` is checked by composing it and by running its
channels_last callback on CPU; ``benchmarks/train_throughput.py`` runs its code paths on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import hydra
import pytest
import pytorch_lightning as pl
import torch

from benchmarks import train_throughput as bench
from callbacks.channels_last import ChannelsLast
from datamodules.aif_datamodule import AIFDataModule
from deployment.cpu_info import CPUInfo, host_cpu
from tests.conftest import ROOT, TINY, compose_train_config
from train import train


def test_gpu_preset_trains_in_bf16_with_channels_last(tmp_path):
    cfg = compose_train_config(["trainer=gpu"], output_dir=tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.callbacks.channels_last._target_ == "callbacks.channels_last.ChannelsLast"
    assert cfg.trainer.max_epochs == 8  # from trainer/default.yaml; trainer=cpu trains 10
    assert compose_train_config([]).trainer.max_epochs == 10
    ddp = compose_train_config(["trainer=ddp"], output_dir=tmp_path)
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.devices == -1
    assert "channels_last" in ddp.callbacks
    sim = compose_train_config(["trainer=ddp_sim"], output_dir=tmp_path)
    assert sim.trainer.devices == 2 and sim.trainer.strategy.process_group_backend == "gloo"
    strategy = hydra.utils.instantiate(sim.trainer.strategy)
    assert isinstance(strategy, pl.strategies.DDPStrategy)


def test_channels_last_callback_trains_the_same_model_on_cpu(tiny_config, tmp_path):
    cfg = tiny_config(
        [
            "trainer.fast_dev_run=true",
            "trainer.precision=32-true",
            "+callbacks.channels_last._target_=callbacks.channels_last.ChannelsLast",
        ]
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["test/lv_dice"]))

    module = hydra.utils.instantiate(cfg.model).eval()
    image = torch.rand(2, 64, 64, 48)
    with torch.no_grad():
        reference = module(image)
        ChannelsLast().on_fit_start(None, module)
        convs = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        batch = {"image": image.clone(), "mask": torch.zeros(2, 64, 48, dtype=torch.long)}
        ChannelsLast().on_train_batch_start(None, module, batch, 0)
        assert batch["image"].is_contiguous(memory_format=torch.channels_last)
        # same values; NHWC kernels only sum in another order (3.7e-5 max abs seen)
        torch.testing.assert_close(module(batch["image"]), reference, atol=2e-4, rtol=1e-3)


def test_throughput_benchmark_code_paths_on_cpu(data_dir, capsys):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    avx2 = CPUInfo("AMD EPYC", "AVX2", frozenset())
    zen4 = CPUInfo("AMD EPYC 9B14", "AVX512", frozenset({"avx512_bf16", "avx512_vnni"}))
    labels = lambda *args: [v.label for v in bench.measurement_plan(*args)]  # noqa: E731
    assert labels(cpu, avx2) == ["fp32"]  # bf16 is emulated there: not the CPU recipe
    assert labels(cpu, zen4) == ["fp32", "bf16 autocast"]
    assert labels(cpu, avx2, False, True) == ["fp32", "bf16 autocast"]  # --bf16
    assert labels(cuda, avx2)[-1] == "bf16 channels_last"
    assert len(labels(cpu, zen4, True)) == 4

    tiny = [o for o in TINY if o.startswith(("model=", "model.", "data."))]
    argv = ["--steps", "1", "--warmup", "0", "--channels-last", "--bf16", *tiny,
            f"paths.data_dir={data_dir}"]  # fmt: skip
    results = dict(bench.main(argv))
    assert set(results) == {
        "DataLoader only",
        "training fp32",
        "training fp32 channels_last",
        "training bf16 autocast",
        "training bf16 channels_last",
    }
    assert all(rate > 0 for rate in results.values())
    out = capsys.readouterr().out
    assert out.startswith(f"CPU: {host_cpu().describe()}\n")  # figures say where they were taken
    assert "device: cpu" in out and "samples/s" in out and "goal" not in out  # goal: GPU only


def test_evaluation_loaders_give_every_case_to_exactly_one_process(data_dir, tmp_path):
    datamodule = AIFDataModule(
        data_dir=str(data_dir), n_patients=8, val_fraction=0.125, test_fraction=0.375, split_out=""
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    test_cases = datamodule.split["test"]
    assert len(test_cases) == 6  # 3 patients x 2 scans
    seen = []
    for rank in range(4):  # 6 cases over 4 processes: Lightning's sampler would pad to 8
        datamodule.trainer = SimpleNamespace(world_size=4, global_rank=rank)
        seen += [c for batch in datamodule.test_dataloader() for c in batch["case_id"]]
    assert sorted(seen) == sorted(test_cases)
    datamodule.trainer = None
    assert [c for b in datamodule.test_dataloader() for c in b["case_id"]] == test_cases


@pytest.mark.slow
def test_ddp_sim_gathers_metrics_over_both_processes(tmp_path, data_dir):
    """2 gloo processes: test metrics over every test case once, equal to a 1-process test."""
    run_dir = tmp_path / "ddp"
    data = [
        *TINY,
        "data.scans_per_patient=3",  # 3 val and 3 test cases: uneven over 2 processes
        f"paths.data_dir={data_dir}",
        f"paths.artifacts_dir={tmp_path / 'artifacts'}",
    ]
    ddp = ["trainer=ddp_sim", "trainer.max_epochs=2", "trainer.limit_train_batches=2"]
    ddp += ["export=none", "callbacks.prediction_figure=null", f"hydra.run.dir={run_dir}"]
    command = [sys.executable, str(ROOT / "train.py"), *data, *ddp]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    record = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    split = json.loads((run_dir / "split.json").read_text())
    assert record["test/n_cases"] == len(split["test"]) == 3
    assert record["val/n_cases"] == len(split["val"]) == 3

    # the same checkpoint tested in one process on the same split gives the same figures
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    single = compose_train_config(
        [*data, f"data.split_file={run_dir / 'split.json'}"], output_dir=tmp_path / "single"
    )
    datamodule = hydra.utils.instantiate(single.data)
    module = hydra.utils.instantiate(single.model)
    state = torch.load(best, weights_only=True)["state_dict"]
    module.load_state_dict(state)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False)
    (tested,) = trainer.test(module, datamodule=datamodule, verbose=False)
    for name in ("test/n_cases", "test/lv_dice", "test/detection_rate", "test/rv_dice"):
        assert record[name] == pytest.approx(tested[name], abs=1e-6), name
