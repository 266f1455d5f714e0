"""Tabulate a multirun: mean ± SD across seeds of each configuration's final metrics.

Reads every ``metrics.json`` (written by ``train.py``) under the given sweep or run directories,
groups the runs by the overrides that vary between them (the repeat keys aside) and prints a
Markdown table; ``summary.md`` and ``summary.csv`` are written (atomically) to the first directory
or ``--out``. Failed jobs (a ``.hydra/`` folder without ``metrics.json``) are listed::

    python train.py -m model=resunet2cs,resunet3cs seed=1,2,3
    python summarize_runs.py logs/train/multiruns/2026-11-24_21-40-00
    python summarize_runs.py <sweep dir> --repeat seed data.fold --metrics test/lv_dice val/lv_dice
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeps.run_summary import (
    DEFAULT_METRICS,
    find_runs,
    summarize,
    to_csv,
    to_markdown,
    write_text,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep (or run) directories")
    parser.add_argument(
        "--repeat",
        nargs="+",
        default=["seed"],
        help="override keys pooled as repeats of one configuration (default: seed)",
    )
    parser.add_argument(
        "--metrics", nargs="+", default=list(DEFAULT_METRICS), help="metrics to tabulate"
    )
    parser.add_argument("--out", type=Path, help="folder for summary.md/.csv (default: first dir)")
    parser.add_argument("--digits", type=int, default=3, help="decimals in the Markdown table")
    args = parser.parse_args(argv)

    try:
        records, failed = find_runs(args.dirs)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not records:
        print(f"error: no metrics.json under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    metrics = [m for m in args.metrics if any(m in r.metrics for r in records)]
    keys, summaries = summarize(records, metrics, args.repeat)
    markdown = to_markdown(keys, summaries, metrics, args.digits)
    if failed:
        markdown += f"\n{len(failed)} failed job(s) without metrics: "
        markdown += ", ".join(str(d) for d in failed) + "\n"
    out = args.out or args.dirs[0]
    write_text(out / "summary.md", markdown)
    write_text(out / "summary.csv", to_csv(keys, summaries, metrics))
    print(markdown, end="")
    print(f"\n{len(records)} runs, {len(summaries)} configurations -> {out}/summary.md, .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
