"""The bottom layer: data contracts (HDF5), the artifact file, atomic writes, CPU probing, and
the scanner formats (DICOM, MRD) as they are added.

Imported by every other package; imports none of them, nor Lightning, Hydra, W&B or MONAI.
"""
