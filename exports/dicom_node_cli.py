"""``python -m exports dicom-node``: the DICOM node (:mod:`exports.dicom_node`)::

    python -m exports dicom-node --ae-title INLINECMR --port 11112 \\
        [--aif-model aif_resunet3cs] [--myocardium-model myo_unet_ft_t2] [--hematocrit 0.42] \\
        (--send-to HOST:PORT:AE | --output-dir DIR) [--spool DIR] [--quiet-time-s 5] \\
        [--accept-ae AE ...] [--accept-host HOST ...]

Served peers: the calling AE titles of ``--accept-ae`` and the addresses of ``--accept-host``;
without them, the ``--send-to`` peer's AE title and host (the PACS that receives the results is
the one that sends the studies). Prints ``listening on HOST:PORT`` once serving; stops on
SIGTERM / SIGINT after the study in hand. Exit status: 0 stopped, 2 bad arguments, an unusable
model or a port that cannot be opened.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["add_dicom_node_parser", "run_dicom_node"]

LOG = logging.getLogger("exports.dicom_node")


def _peers(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(accepted AE titles, accepted IP addresses) from the flags (module docstring)."""
    from exports.dicom_node import resolve_hosts
    from exports.dicom_node_sender import Destination

    destination = Destination.parse(args.send_to) if args.send_to else None
    titles = args.accept_ae or ([destination.ae_title] if destination else [])
    hosts = args.accept_host or ([destination.host] if destination else [])
    if not titles or not hosts:
        raise ValueError(
            "with --output-dir, give the peers to serve: --accept-ae AE ... and "
            "--accept-host HOST ..."
        )
    too_long = [t for t in titles if len(t) > 16]
    if too_long:
        raise ValueError(f"--accept-ae {too_long[0]!r}: longer than 16 characters")
    return tuple(titles), resolve_hosts(hosts)


def run_dicom_node(args: argparse.Namespace) -> int:
    """The ``dicom-node`` subcommand; returns the exit status."""
    import torch

    from deployment.artifact import ArtifactError
    from exports.dicom_node import DicomNode, NodeSettings
    from exports.dicom_node_pipelines import NodeModels
    from exports.dicom_node_sender import Destination, FolderSender, StoreSender
    from exports.dicom_spool import Spool
    from exports.mrd_server import load_models

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if (args.send_to is None) == (args.output_dir is None):
        print("error: give one of --send-to HOST:PORT:AE or --output-dir DIR", file=sys.stderr)
        return 2
    if args.hematocrit is not None and not 0.0 < args.hematocrit < 1.0:
        print(f"error: --hematocrit {args.hematocrit}: expected a fraction 0-1", file=sys.stderr)
        return 2
    try:
        titles, hosts = _peers(args)
        sender: Any = (
            StoreSender(Destination.parse(args.send_to), args.ae_title, args.max_send_attempts)
            if args.send_to
            else FolderSender(args.output_dir)
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        loaded = load_models(args.aif_model, args.myocardium_model, threads=args.threads)
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models = NodeModels(
        loaded, args.aif_model, args.myocardium_model, args.hematocrit, not args.no_figures
    )
    settings = NodeSettings(args.ae_title, args.host, args.port, titles, hosts, args.quiet_time_s)
    node = DicomNode(settings, Spool(args.spool), models, sender)
    try:
        host, port = node.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    print(f"listening on {host}:{port}", flush=True)
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        LOG.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopping.wait()
    node.stop()
    return 0


def add_dicom_node_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``dicom-node`` subcommand."""
    p = subparsers.add_parser(
        "dicom-node", help="DICOM Storage SCP: series in, Segmentation / Parametric Map out"
    )
    p.add_argument("--ae-title", default="INLINECMR", help="our AE title (default INLINECMR)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default 11112; 0: free)")
    p.add_argument(
        "--aif-model",
        type=Path,
        help="AIF artifact (.ts) or deployed name; "
        "without it AIF series are reported and not processed",
    )
    p.add_argument(
        "--myocardium-model",
        type=Path,
        help="myocardium artifact (.ts) or deployed name; without it whole-slice maps",
    )
    p.add_argument(
        "--hematocrit",
        type=float,
        help="fraction 0-1 for ECV (DICOM carries none); without it no ECV",
    )
    p.add_argument(
        "--no-figures",
        action="store_true",
        help="send no Secondary Capture figures (about 40 %% of the processing time)",
    )
    p.add_argument(
        "--send-to", metavar="HOST:PORT:AE", help="send the results to this peer by C-STORE"
    )
    p.add_argument("--output-dir", type=Path, help="write the results into DIR/<study>/ instead")
    p.add_argument(
        "--spool",
        type=Path,
        default=Path("dicom_spool"),
        help="spool folder: received files, rounds, sent log (default ./dicom_spool)",
    )
    p.add_argument(
        "--quiet-time-s",
        type=float,
        default=5.0,
        help="a study is complete after this long without a new file (default 5)",
    )
    p.add_argument(
        "--accept-ae",
        nargs="+",
        default=[],
        help="calling AE titles served (default: the --send-to AE title)",
    )
    p.add_argument(
        "--accept-host",
        nargs="+",
        default=[],
        help="peer host names or addresses served (default: the --send-to host)",
    )
    p.add_argument(
        "--max-send-attempts",
        type=int,
        default=3,
        help="associations tried per batch of results before giving up (default 3)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.set_defaults(handler=run_dicom_node)
    return p
