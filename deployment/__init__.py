"""Deployment: the artifact file and its index, the CPU probe, the exporter (TorchScript, ONNX,
parity check), int8 quantisation, and the list / promote / rollback command line.

Sits above ``formats`` and ``quantification``; used by the training callbacks and by the scanner
side (``exports``). Imports torch, NumPy and the layers below only: no Lightning, Hydra, W&B or
MONAI. Reference: docs/deployment.md.
"""
