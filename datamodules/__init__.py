"""LightningDataModules, HDF5 readers, transforms and synthetic phantoms."""
