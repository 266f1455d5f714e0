"""DICOM: folder trees in (classify series, timing per vendor, pixel decoding, labels, the HDF5
contracts written from them) and results out (Segmentation, Parametric Map). Reference:
docs/dicom.md."""
