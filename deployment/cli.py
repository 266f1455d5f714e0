"""``inline-cmr list | promote | rollback`` (also ``python -m deployment ...`` and ``python -m
exports ...``): which model is deployed.

``list [NAME ...]`` prints, per deployed name of the artifacts folder, every stored version (the
deployed one marked ``*``): created time, sha256, precision, the test metric, source run and the
exporting CPU, then every promotion with its reason. ``list --runs DIR ...`` prints instead the
exports found in run or sweep directories (candidates not yet deployed).

``promote TARGET`` deploys a run directory (its ``export/<name>.ts``), an exported ``.ts`` file,
or ``NAME@VERSION`` (a version listed by ``list``: a roll back) at the stable path
``<artifacts>/<name>.ts`` through the artifact index (:mod:`deployment.artifact_index`); the
version it replaces stays stored and listed.

``rollback NAME`` deploys again the version that was deployed before the current one.

All read ``--artifacts-dir`` (default ``$INLINE_CMR_ARTIFACTS`` or the repository's
``artifacts/``). Exit status: 0 done, 2 bad target or unusable index.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from deployment.artifact import ArtifactError
from deployment.artifact_index import ArtifactIndex, default_artifacts_dir, export_record

__all__ = ["add_list_parser", "add_promote_parser", "format_table", "metric_text"]

_COUNT_METRICS = ("n_cases", "n_images")


def _shown(path: str | None) -> str:
    """A path relative to the working directory when it lies below it."""
    if not path:
        return "-"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def metric_text(record: dict[str, Any]) -> str:
    """The test counterpart of the run's ``optimized_metric`` (``val/lv_dice`` ->
    ``test/lv_dice``), with its SD when recorded, e.g. ``test/lv_dice 0.955 ± 0.026``.

    Example:
        >>> metric_text({"optimized_metric": "val/dsc",
        ...              "test_metrics": {"test/dsc": 0.87, "test/dsc_sd": 0.06}})
        'test/dsc 0.870 ± 0.060'
    """
    metrics = record.get("test_metrics") or {}
    if not metrics:
        return "- (not tested)"
    wanted = str(record.get("optimized_metric") or "").replace("val/", "test/", 1)
    if wanted not in metrics:
        usable = sorted(k for k in metrics if not k.endswith(("_sd", *_COUNT_METRICS)))
        wanted = usable[0] if usable else sorted(metrics)[0]
    value, sd = metrics[wanted], metrics.get(f"{wanted}_sd")
    text = f"{wanted} {value:.3f}" if isinstance(value, float) else f"{wanted} {value}"
    if isinstance(sd, float) and math.isfinite(sd):
        text += f" ± {sd:.3f}"
    return text


def _cpu_text(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "-"
    details = [str(cpu.get("capability", "?")), *(cpu.get("features") or [])]
    return f"{cpu.get('model', '?')} ({', '.join(details)})"


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned text columns, two spaces apart.

    Example:
        >>> print(format_table(["a", "bb"], [["xyz", "1"]]))
        a    bb
        xyz  1
    """
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


_HEADER = ["", "version", "exported (UTC)", "sha256", "precision", "test", "source run", "CPU"]


def _row(mark: str, label: str, record: dict[str, Any]) -> list[str]:
    sha = record.get("sha256") or ""
    source = record.get("source_run") or record.get("source_file")
    return [
        mark,
        label,
        str(record.get("created_utc") or "-"),
        sha[:12] or "-",
        str(record.get("precision") or "-"),
        metric_text(record),
        _shown(source),
        _cpu_text(record.get("exporting_cpu")),
    ]


def list_index(index: ArtifactIndex, names: list[str]) -> str:
    """The history of each name (all names when ``names`` is empty) as text tables."""
    known = index.names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ArtifactError(f"{index.path}: no artifact named {unknown} (known: {known})")
    blocks = []
    outside = sorted(p.name for p in index.directory.glob("*.ts") if p.stem not in known)
    if outside and not names:  # e.g. exported before the index existed
        blocks.append(
            f"not in {index.path} yet (each is stored as a version before anything "
            f"replaces it): {', '.join(outside)}"
        )
    if not known:
        return "\n\n".join([f"{index.path}: no deployed artifacts yet", *blocks])
    for name in names or known:
        versions = index.versions(name)
        deployed = next(v for v in versions if v.deployed)
        lines = [f"{name}: deployed {deployed.label} at {_shown(str(index.stable_path(name)))}"]
        if not index.deployed_matches_stable(name):
            lines.append(
                f"  WARNING: {index.stable_path(name)} does not hold {deployed.label}; "
                f"run `python -m exports promote {deployed.label}` to restore it"
            )
        rows = [_row("*" if v.deployed else "", v.label, v.record) for v in versions]
        lines.append(format_table(_HEADER, rows))
        lines.append("promotions:")
        for event in index.promotions(name):
            lines.append(f"  {event['promoted_utc']}  {name}@{event['version']}  {event['reason']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def list_runs(roots: list[Path]) -> str:
    """The exports under run or sweep directories (``*/export/*.ts``), as one table."""
    rows = []
    for root in roots:
        if not root.is_dir():
            raise ArtifactError(f"{root}: no such run or sweep directory")
        for file in sorted(root.glob("**/export/*.ts")):
            record = export_record(file)
            mark = "check" if record["check_run"] else ""
            rows.append(_row(mark, _shown(str(file)), record))
    if not rows:
        return f"no exports under {', '.join(map(str, roots))}"
    return format_table(["", "export", *_HEADER[2:]], rows)


def _index(args: argparse.Namespace) -> ArtifactIndex:
    return ArtifactIndex(args.artifacts_dir or default_artifacts_dir())


def run_list(args: argparse.Namespace) -> int:
    """The ``list`` subcommand; returns the exit status."""
    try:
        print(list_runs(args.runs) if args.runs else list_index(_index(args), args.names))
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_promote(args: argparse.Namespace) -> int:
    """The ``promote`` subcommand; returns the exit status. ``args.on_promoted`` (set by a caller
    such as the training side's ``python -m sweeps.promotion``) is called with the version."""
    index = _index(args)
    try:
        version = index.promote_target(args.target, args.name, allow_check_run=args.allow_check_run)
    except (ArtifactError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Deployed {version.label} at {_shown(str(index.stable_path(version.name)))} "
        f"({metric_text(version.record)}; from {_shown(version.record.get('source_file'))})"
    )
    for hook in getattr(args, "on_promoted", ()):
        hook(version)
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """The ``rollback`` subcommand; returns the exit status."""
    index = _index(args)
    try:
        version = index.rollback(args.name)
    except (ArtifactError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Rolled back: {version.label} is deployed at {_shown(str(index.stable_path(args.name)))}"
    )
    return 0


def _artifacts_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts-dir",
        type=Path,
        default=None,
        help="artifacts folder (default: $INLINE_CMR_ARTIFACTS, else the repository's artifacts/)",
    )


def add_list_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``list`` subcommand."""
    p = subparsers.add_parser("list", help="every deployed model and the versions it replaced")
    p.add_argument("names", nargs="*", help="deployed names to show (default: all)")
    p.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        help="list the exports in these run or sweep directories instead (candidates for promote)",
    )
    _artifacts_dir_option(p)
    p.set_defaults(handler=run_list)
    return p


def add_promote_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``promote`` subcommand."""
    p = subparsers.add_parser("promote", help="deploy a run's export, or roll back to a version")
    p.add_argument("target", help="run directory, exported .ts file, or NAME@VERSION (see list)")
    p.add_argument("--name", help="deployed name (default: the .ts file's stem)")
    p.add_argument(
        "--allow-check-run",
        action="store_true",
        help="deploy even an export of a check run (fast_dev_run, debug=*)",
    )
    _artifacts_dir_option(p)
    p.set_defaults(handler=run_promote)
    return p


def add_rollback_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``rollback`` subcommand."""
    p = subparsers.add_parser("rollback", help="deploy again the version deployed before this one")
    p.add_argument("name", help="deployed name, e.g. aif_basic_unet3cs (see list)")
    _artifacts_dir_option(p)
    p.set_defaults(handler=run_rollback)
    return p


PARSERS = (add_list_parser, add_promote_parser, add_rollback_parser)
"""The subcommands of this module, as ``exports`` and ``deployment`` register them."""


def main(argv: list[str] | None = None, on_promoted: tuple[Any, ...] = ()) -> int:
    """``python -m deployment list | promote | rollback ...``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m deployment", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in PARSERS:
        register(sub)
    args = parser.parse_args(argv)
    args.on_promoted = on_promoted
    return args.handler(args)
