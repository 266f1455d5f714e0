"""The bottom layer: the HDF5 data contracts (AIF, mapping), their errors, atomic writes, and the
scanner formats by standard: :mod:`formats.dicom` and :mod:`formats.mrd`.

Imported by every other package; imports none of them, nor Lightning, Hydra, W&B or MONAI.
Reference: docs/data_contracts.md.
"""
