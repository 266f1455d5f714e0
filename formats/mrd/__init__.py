"""ISMRM Raw Data (MRD v1) streaming and files: the message stream, image headers and meta, the
XML header, MRD files in and out. Reference: docs/mrd_server.md."""
