"""Precision from the hardware, and progress in any terminal (a real tiny training run)."""

from __future__ import annotations

import re

import pytest

from deployment import cpu_info
from train import resolve_precision, train

ZEN3 = cpu_info.probe_cpu(("AMD EPYC 7B13", {"avx2", "fma"}), "AVX2", mkldnn_bf16=False)
ZEN4 = cpu_info.probe_cpu(
    ("AMD EPYC 9B14", {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}), "AVX512", True
)
SKYLAKE = cpu_info.probe_cpu(("Xeon Gold 6152", {"avx2", "avx512f"}), "AVX512", True)


def test_the_probe_reads_bf16_and_vnni_from_the_cpu_flags_and_torch():
    assert (ZEN3.native_bf16, ZEN3.vnni) == (False, False)
    assert (ZEN4.native_bf16, ZEN4.vnni) == (True, True)
    # oneDNN "supports" bf16 on any AVX-512 CPU, but without the bf16 instructions it emulates
    assert not SKYLAKE.native_bf16
    host = cpu_info.host_cpu()  # the real probe runs and names this machine
    assert host.model and host.capability in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "NO AVX"}


@pytest.mark.parametrize(
    ("cpu", "requested", "expected"),
    [
        (ZEN3, "auto", "32-true"),
        (SKYLAKE, "auto", "32-true"),
        (ZEN4, "auto", "bf16-mixed"),
        (ZEN3, "bf16-mixed", "bf16-mixed"),  # an explicit choice wins, with a warning in the log
        (ZEN4, "32-true", "32-true"),
    ],
)
def test_cpu_training_precision_follows_native_bf16(cpu, requested, expected):
    precision, reason = cpu_info.training_precision(requested, cpu)
    assert precision == expected
    assert reason.startswith(f"CPU: {cpu.model} ({cpu.capability};") and expected in reason


def test_trainer_cpu_resolves_auto_for_the_host_and_logs_why(tiny_config, monkeypatch, caplog):
    monkeypatch.setattr(cpu_info, "host_cpu", lambda: ZEN3)
    cfg = tiny_config()
    assert cfg.trainer.precision == "auto"  # conf/trainer/cpu.yaml
    with caplog.at_level("INFO"):
        assert resolve_precision(cfg) == "32-true"
    assert cfg.trainer.precision == "32-true"
    assert "AVX2; no native bf16; no VNNI) -> precision 32-true" in caplog.text
    monkeypatch.setattr(cpu_info, "host_cpu", lambda: ZEN4)
    assert resolve_precision(tiny_config()) == "bf16-mixed"
    assert resolve_precision(tiny_config(["trainer.precision=32-true"])) == "32-true"


def test_without_a_terminal_each_epoch_prints_one_progress_line(tiny_config, capsys):
    cfg = tiny_config(["trainer.max_epochs=2", "export=none", "test=false"])
    train(cfg)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2, out
    pattern = (
        r"epoch 1/2  train/loss \d+\.\d{4}  val/lv_dice \d\.\d{4}  "
        r"elapsed \d+:\d\d  remaining ~\d+:\d\d"
    )
    assert re.fullmatch(pattern, lines[0]), lines[0]
    assert re.fullmatch(r"epoch 2/2  .*elapsed \d+:\d\d", lines[1]) and "remaining" not in lines[1]
