"""``inline-cmr <subcommand>`` (= ``python -m exports <subcommand>``): the scanner-side runtime.

One module per subcommand, each registering its parser with a ``handler(args) -> exit status``:
``aif`` (:mod:`exports.aif_cli`), ``mapping`` (:mod:`exports.mapping_cli`), ``dicom-import``
(:mod:`exports.dicom_import_cli`), ``mrd-import`` (:mod:`exports.mrd_import_cli`), ``serve``
(:mod:`exports.mrd_server`), ``dicom-node`` (:mod:`exports.dicom_node_cli`), and
``list | promote | rollback`` (:mod:`deployment.cli`).
"""

from __future__ import annotations

import argparse
import sys

from deployment.cli import PARSERS as DEPLOYMENT_PARSERS
from exports.aif_cli import add_aif_parser
from exports.dicom_import_cli import add_dicom_import_parser
from exports.dicom_node_cli import add_dicom_node_parser
from exports.mapping_cli import add_mapping_parser
from exports.mrd_import_cli import add_mrd_import_parser
from exports.mrd_server import add_serve_parser
from exports.perfusion_cli import add_perfusion_parser

SUBCOMMANDS = (
    add_aif_parser,
    add_mapping_parser,
    add_dicom_import_parser,
    add_mrd_import_parser,
    add_serve_parser,
    add_perfusion_parser,
    add_dicom_node_parser,
    *DEPLOYMENT_PARSERS,
)
"""Every subcommand's ``add_*_parser``; a new subcommand adds its own line here."""


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand; returns its exit status."""
    parser = argparse.ArgumentParser(prog="inline-cmr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(sub)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
