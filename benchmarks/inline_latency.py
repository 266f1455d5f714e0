"""Scanner-side latency of the AIF model on CPU threads: cold load and per-series inference.

``python benchmarks/inline_latency.py [--checkpoint RUN/checkpoints/best.ckpt] [--threads 2]
[--runs 50]``

Every variant runs in a fresh Python process (as on the scanner) that reports: ``import torch``
(or onnxruntime), cold load of the model file, the first inference, and the median of ``--runs``
inferences of one preprocessed series [1, 64, 64, 48] after 5 warm-up calls. Variants:

* ``torchscript``: the artifact as exported (scripted + frozen), loaded with
  ``exports.load_artifact`` (sha256 verified) and run by ``Artifact.probabilities``;
* ``torchscript+profiling``: the same file run with TorchScript's default graph executor
  (profiling runs, then JIT passes; the runtime switches that off: slower first calls only);
* ``torchscript+tta``: the same file with the runtime's flip test-time augmentation (``--tta``:
  the series and its three flips in one call of batch 4, probabilities averaged);
* ``torchscript+bnfold``: the same, with batch norm folded into the convs while freezing;
* ``torchscript+channels_last``: frozen from a channels_last copy of the network;
* ``torchscript+bf16``: exported with ``precision="bf16"`` (bfloat16 weights and activations;
  fast only on CPUs with AVX512-BF16 or AMX, e.g. Zen 4, Sapphire Rapids; measured only there,
  or with ``--bf16``, loaded past the artifact's CPU check, to show how slow emulation is);
* ``torchscript+int8``: exported with ``precision="int8"`` (static int8 quantisation, fbgemm;
  calibrated on random series, so only its latency means something here);
* ``eager``: the ``ResUNet`` class built and its ``state_dict`` loaded (``torch.load``);
* ``onnxruntime``: the ONNX export run by ONNX Runtime (if installed).

The first line names the CPU (``deployment.cpu_info``). The model is the default 3CS ResUNet
(6.5 M parameters) with the weights of ``--checkpoint``, or
random weights and batch-norm statistics from random data (latency does not depend on the
weights; parity is pessimistic with random ones), exported with ``export_artifact``. Parity of
every variant with eager is printed (max abs probability difference). The published Gadgetron
figures (docs/method.md §A8, 2x Xeon Gold 6152): load 340 ms, inference 180 ms.

Compute bound: the network costs 9.5 GFLOP per series (4.75 G multiply-adds in its convs). Two
Zen 4 cores (AVX-512 run as 2 x 256-bit FMA, 32 fp32 FLOP/cycle/core) peak at ~224 GFLOPS at
3.5 GHz, i.e. >= ~42 ms per series in fp32 at 100 % efficiency.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployment.cpu_info import host_cpu  # noqa: E402

PUBLISHED_LOAD_MS, PUBLISHED_INFERENCE_MS = 340.0, 180.0

COMMON = """
import json, sys, time
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{load}
t2 = time.perf_counter()
import numpy as np
x = np.random.default_rng(0).random((1, 64, 64, 48), dtype=np.float32)
y = run(x)
t3 = time.perf_counter()
for _ in range(5):
    run(x)
times = []
for _ in range({runs}):
    s = time.perf_counter()
    y = run(x)
    times.append(time.perf_counter() - s)
np.save(sys.argv[2], np.asarray(y))
print(json.dumps({{"import_ms": 1e3 * (t1 - t0), "load_ms": 1e3 * (t2 - t1),
    "first_ms": 1e3 * (t3 - t2), "median_ms": 1e3 * float(np.median(times)),
    "p90_ms": 1e3 * float(np.percentile(times, 90))}}))
"""

TORCH_IMPORT = "import torch\ntorch.set_num_threads({threads})\ntorch.set_num_interop_threads(1)"

VARIANTS = {
    "torchscript": (
        TORCH_IMPORT + "\nfrom deployment.artifact import load_artifact",
        "model = load_artifact(sys.argv[1])\nrun = model.probabilities",
    ),
    "emulated": (  # a bf16 artifact on a CPU without native bf16: past the load-time refusal
        TORCH_IMPORT + "\nfrom deployment.artifact import load_artifact",
        "model = load_artifact(sys.argv[1], check_cpu=False)\nrun = model.probabilities",
    ),
    "eager": (
        TORCH_IMPORT + "\nfrom lightning_modules.networks.resunet import ResUNet",
        "saved = torch.load(sys.argv[1], weights_only=True)\n"
        "net = ResUNet(**saved['kwargs']); net.load_state_dict(saved['state_dict']); net.eval()\n"
        "def run(x):\n"
        "    with torch.inference_mode():\n"
        "        return net(torch.from_numpy(x)).softmax(1).numpy()",
    ),
    "onnxruntime": (
        "import onnxruntime as ort",
        "opts = ort.SessionOptions()\nopts.intra_op_num_threads = {threads}\n"
        "opts.inter_op_num_threads = 1\n"
        "session = ort.InferenceSession(sys.argv[1], opts, providers=['CPUExecutionProvider'])\n"
        "run = lambda x: session.run(None, {{'image': x}})[0]",
    ),
}


def measure(variant: str, model_file: Path, threads: int, runs: int, out: Path) -> dict:
    """Run one variant in a fresh process; returns its timings (ms) and writes its output."""
    emulated = variant.endswith("+bf16") and not host_cpu().native_bf16
    imports, load = VARIANTS["emulated" if emulated else variant.split("+")[0]]
    if variant.endswith("+tta"):  # the runtime's --tta: the series and its 3 flips, one call
        load += "\nfrom exports.aif_pipeline import flip_averaged_probabilities"
        load += "\nrun = lambda x: flip_averaged_probabilities(model.probabilities, x)"
    if variant.endswith("+profiling"):  # TorchScript's default: profiling runs, then JIT passes
        load += "\ndef run(x):\n    with torch.inference_mode():\n"
        load += "        return model.module(torch.from_numpy(x)).numpy()"
    code = COMMON.format(
        imports=imports.format(threads=threads), load=load.format(threads=threads), runs=runs
    )
    return run_fresh_process(code, [str(model_file), str(out)], threads, variant)


def run_fresh_process(code: str, args: list[str], threads: int, label: str) -> dict:
    """Run ``code`` with ``python -c`` in a fresh process (``threads`` OpenMP threads, only the
    project on its path, as on the scanner) and return its last stdout line, parsed as JSON."""
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    if done.returncode:
        raise RuntimeError(f"{label} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(workdir: Path, checkpoint: Path | None, bf16: bool) -> dict[str, Path]:
    """Model files of every variant, from the default 3CS ResUNet (random or trained weights)."""
    import numpy as np
    import torch

    from deployment.exporter import export_artifact
    from lightning_modules.networks.resunet import ResUNet
    from quantification.aif_preprocessing import AIFPreprocessing

    torch.manual_seed(0)
    kwargs = {"in_channels": 64, "n_outputs": 3}  # the paper's / conf default: 6.5 M parameters
    net = ResUNet(**kwargs)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        print(f"Weights of {checkpoint}")
    else:
        with torch.no_grad():
            net.train()(torch.rand(16, 64, 64, 48))
    net.eval()
    n_params = sum(p.numel() for p in net.parameters())
    print(f"ResUNet {kwargs}: {n_params / 1e6:.2f} M parameters")
    batch = torch.from_numpy(np.random.default_rng(1).random((4, 64, 64, 48), dtype=np.float32))
    meta = {"preprocessing": asdict(AIFPreprocessing()), "model": "benchmark"}
    files = {"eager": workdir / "eager.pt"}
    torch.save({"kwargs": kwargs, "state_dict": net.state_dict()}, files["eager"])
    files["torchscript"] = workdir / "model.ts"
    export_artifact(net, 3, batch, files["torchscript"], meta)
    files["torchscript+profiling"] = files["torchscript"]
    files["torchscript+tta"] = files["torchscript"]
    if _has_onnx():  # its own parity is printed below: random weights exaggerate rounding
        export_artifact(
            net, 3, batch, workdir / "onnx" / "model.ts", meta, onnx=True, atol=1, onnx_atol=1
        )
        files["onnxruntime"] = workdir / "onnx" / "model.onnx"
    files["torchscript+bnfold"] = workdir / "model_bnfold.ts"
    export_artifact(net, 3, batch, files["torchscript+bnfold"], meta, fold_batchnorm=True, atol=1)
    files["torchscript+channels_last"] = workdir / "model_cl.ts"
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    export_artifact(net_cl, 3, batch, files["torchscript+channels_last"], meta, atol=1)
    if bf16:
        files["torchscript+bf16"] = workdir / "model_bf16.ts"
        export_artifact(net, 3, batch, files["torchscript+bf16"], meta, precision="bf16")
    # int8: calibrated on random series here (latency does not depend on the ranges, accuracy
    # does: an artifact calibrated on real cases is evaluated with evaluate.py, see the README)
    files["torchscript+int8"] = workdir / "model_int8.ts"
    calibration = torch.from_numpy(np.random.default_rng(2).random((32, 64, 64, 48), np.float32))
    export_artifact(
        net, 3, batch, files["torchscript+int8"], meta, precision="int8",
        calibration=calibration,
    )  # fmt: skip
    return files


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="Lightning .ckpt of a default-size 3CS run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--bf16", action="store_true", help="measure bf16 even where it is emulated"
    )
    args = parser.parse_args()
    print(f"CPU: {host_cpu().describe()}")

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        files = prepare(workdir, args.checkpoint, args.bf16 or host_cpu().native_bf16)
        results, outputs = {}, {}
        for variant, path in files.items():
            results[variant] = measure(variant, path, args.threads, args.runs, workdir / "y.npy")
            outputs[variant] = np.load(workdir / "y.npy")
    print(f"\n{args.threads} threads, median of {args.runs} runs, one series [1, 64, 64, 48]:")
    header = f"{'variant':28s} {'import':>8s} {'load':>8s} {'1st inf':>8s} {'median':>8s}"
    print(header + f" {'p90':>8s} {'max|dp|':>9s}")
    print(
        f"{'published (Gadgetron)':28s} {'':>8s} {PUBLISHED_LOAD_MS:8.0f} {'':>8s} "
        f"{PUBLISHED_INFERENCE_MS:8.0f}"
    )
    for variant, r in results.items():
        diff = float(np.abs(outputs[variant] - outputs["eager"]).max())
        print(
            f"{variant:28s} {r['import_ms']:8.0f} {r['load_ms']:8.1f} {r['first_ms']:8.0f} "
            f"{r['median_ms']:8.1f} {r['p90_ms']:8.1f} {diff:9.1e}"
        )
    print(
        "(ms; 'load' = reading the model file into a ready model in a fresh process, after the "
        "import; goal: load <= 60 ms, inference <= 30 ms)"
    )


if __name__ == "__main__":
    main()
