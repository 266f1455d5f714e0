"""Bad input through the real entry point: one clear error naming the problem, nothing half-written.

Each case corrupts one scan of a copy of the tiny phantom file and runs ``train.train`` on it (or
``python train.py`` in-process for config mistakes). The reader-level checks of every contract
key are in ``tests/test_aif_hdf5_contract.py``, the runtime's input checks in
``tests/test_inline_runtime.py`` and composition errors in ``tests/test_configs.py``; here the
question is what a user sees, and what is left on disk, when a run starts on such input.
"""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException

from datamodules.aif_datamodule import AIFDataModule
from datamodules.patient_split import read_split
from formats.aif_contract import AIFContractError
from tests.conftest import ROOT, TINY, compose_train_config
from train import train


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """The tiny phantom set of the TINY config (8 patients) and the split a run draws from it."""
    folder = tmp_path_factory.mktemp("good")
    datamodule = AIFDataModule(
        data_dir=str(folder),
        n_patients=8,
        val_fraction=0.125,
        test_fraction=0.125,
        split_out=None,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule.file, datamodule.split


def replace(key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.Group], None]:
    def mutate(group: h5py.Group) -> None:
        value = fn(group[key][()])
        del group[key]
        group[key] = value

    return mutate


def set_at(index, value) -> Callable[[np.ndarray], np.ndarray]:
    def fn(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array[index] = value
        return array

    return fn


def delete(key: str) -> Callable[[h5py.Group], None]:
    def mutate(group: h5py.Group) -> None:
        del group[key]

    return mutate


# name: (key named in the error, what the error says, corruption of the first validation scan,
# which the sanity check reads before any training step)
CORRUPTIONS = {
    "series float64": ("series", "dtype float32", replace("series", lambda a: a.astype("f8"))),
    "series int16": ("series", "dtype float32", replace("series", lambda a: a.astype("i2"))),
    "series rank 2": ("series", r"\[T, RO, E1\]", replace("series", lambda a: a[0])),
    "series rank 4": ("series", r"\[T, RO, E1\]", replace("series", lambda a: a[None])),
    "series NaN": ("series", "1 NaN/Inf", replace("series", set_at((9, 30, 20), np.nan))),
    "series Inf": ("series", "1 NaN/Inf", replace("series", set_at((0, 0, 0), np.inf))),
    "missing times_s": ("times_s", "missing", delete("times_s")),
    "times not increasing": ("times_s", "strictly increasing", replace("times_s", np.flip)),
    "times repeated": ("times_s", "strictly increasing", replace("times_s", set_at(5, 0.0))),
    "empty label": ("mask", "at least one LV pixel", replace("mask", np.zeros_like)),
    "label out of range": ("mask", r"found \[7\]", replace("mask", set_at((3, 3), 7))),
    "mask/series shape": ("mask", "frame shape", replace("mask", lambda a: a[:, :-4])),
    "mask int32": ("mask", "dtype uint8", replace("mask", lambda a: a.astype("i4"))),
}


def run_on(data_file: Path, run_dir: Path, data_dir: Path, extra: list[str] = ()) -> dict:
    overrides = [*TINY, f"data.path={data_file}", f"paths.data_dir={data_dir}"]
    overrides += [f"paths.artifacts_dir={run_dir / 'artifacts'}", "trainer.max_epochs=1", *extra]
    return train(compose_train_config(overrides, output_dir=run_dir))


def assert_nothing_half_written(run_dir: Path) -> None:
    """No metrics, checkpoints, figures or artifacts; no temporary files; any split is whole."""
    written = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    assert set(written) <= {"split.json"}, written
    if "split.json" in written:
        json.loads((run_dir / "split.json").read_text())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_scan_stops_the_run_with_one_clear_error(name, good_file, tmp_path, data_dir):
    key, says, corrupt = CORRUPTIONS[name]
    source, split = good_file
    bad_file = tmp_path / "bad.h5"
    shutil.copyfile(source, bad_file)
    bad_case = split["val"][0]
    with h5py.File(bad_file, "r+") as h5:
        corrupt(h5[bad_case])

    with pytest.raises(AIFContractError, match=says) as error:
        run_on(bad_file, tmp_path / "run", data_dir)

    message = str(error.value)
    assert message.startswith(f"{bad_file}: case '{bad_case}', key '{key}': expected ")
    assert "; found " in message and message.count("expected") == 1
    assert_nothing_half_written(tmp_path / "run")


def test_a_truncated_file_is_refused_before_anything_is_written(good_file, tmp_path, data_dir):
    source, _ = good_file
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 3])

    with pytest.raises(AIFContractError, match="expected a readable HDF5 file") as error:
        run_on(truncated, tmp_path / "run", data_dir)
    assert str(error.value).startswith(str(truncated))
    assert_nothing_half_written(tmp_path / "run")


def test_a_split_file_with_a_case_in_two_subsets_is_refused(good_file, tmp_path, data_dir):
    source, split = good_file
    bad_split = tmp_path / "split.json"
    twice = split["val"][0]
    bad_split.write_text(json.dumps({**split, "test": [*split["test"], twice]}))
    with pytest.raises(ValueError, match=f"{twice}' is in both 'val' and 'test'"):
        read_split(bad_split, set(sum(split.values(), [])))
    with pytest.raises(ValueError, match=str(bad_split)):
        run_on(source, tmp_path / "run", data_dir, [f"data.split_file={bad_split}"])
    assert_nothing_half_written(tmp_path / "run")


def test_an_unknown_config_key_names_the_key_and_its_component(good_file, tmp_path, data_dir):
    source, _ = good_file
    with pytest.raises(InstantiationException, match="input_plane") as error:
        run_on(source, tmp_path / "run", data_dir, ["+model.net.input_plane=8"])
    assert "full_key: model.net" in str(error.value)
    assert_nothing_half_written(tmp_path / "run")


def run_cli(args: list[str], monkeypatch) -> int:
    """``python train.py <args>`` in this process; returns the exit status."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py"), *args])
    GlobalHydra.instance().clear()
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        GlobalHydra.instance().clear()
    return 0


@pytest.mark.parametrize(
    "override, says",
    [
        ("model=resunet4cs", "Could not find 'model/resunet4cs'"),
        ("model.optimizer.lerning_rate=0.1", "Key 'lerning_rate' is not in struct"),
        ("trainer=gpus", "Could not find 'trainer/gpus'"),
    ],
)
def test_command_line_mistakes_exit_with_one_message(override, says, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert run_cli([override, f"hydra.run.dir={run_dir}"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not run_dir.exists(), "the run directory is not even created"
