"""``m2f batch``: segment a video and image archive into a destination, resumably, here or on a Ray cluster
(``sdk.batch.batch`` does the work; the options are ``sdk.batch_options.BatchOptions``' fields)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sdk import cli_predict
from sdk.batch_options import BatchOptions
from sdk.cli_fields import add_field_options

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

BATCH_DESCRIPTION = """\
Segment every video and image SOURCES name into OUT: label PNGs per frame by default, and what else is asked for.
SOURCE is a file, a folder (searched recursively), a glob pattern ("footage/**/*.mp4", quoted) or @FILE, a list of
paths one a line. OUT/summary.csv has one row per input (status, frames, timings, the reason a failed one failed);
OUT/.m2f-batch records what is done: run the same command again and it finishes only what is missing."""

BATCH_EPILOG = """\
exit status: 0 every input done, 1 some failed (listed on stderr, rows in summary.csv), 2 nothing to do or it could
not run (bad arguments, model or OUT, another job writing OUT, OUT made with other settings), 130 interrupted
(Ctrl-C: what was finished stays done; run it again to go on).

examples:
  m2f batch footage/ stills/ --out labelled/                       here, one worker
  m2f batch footage/ --out labelled/ --workers 2 --histograms --coco
  ray start --head && m2f batch footage/ --out /shared/labelled --ray auto    on the Ray cluster"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``batch`` subcommand on an ``add_subparsers()`` object."""
    parser = sub.add_parser(
        "batch",
        help="segment a video and image archive, resumably, here or on a Ray cluster",
        description=BATCH_DESCRIPTION,
        epilog=BATCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="file, folder, glob pattern or @list")
    parser.add_argument("--out", required=True, help="destination folder (created; resumable)")
    cli_predict.add_model_arguments(parser)
    add_field_options(parser, BatchOptions)
    parser.add_argument("--json", action="store_true", help="stdout: one JSON object per input, then the run's")
    return parser


def batch_main(args: argparse.Namespace) -> int:
    """Run ``m2f batch`` from parsed arguments; the exit status. A user's mistake is one line, no traceback."""
    from sdk.batch import batch
    from sdk.batch_manifest import BatchError

    values = {name: getattr(args, name) for name in BatchOptions.__dataclass_fields__ if hasattr(args, name)}
    try:
        report = batch(args.sources, args.out, cli_predict.segmenter_arguments(args), progress=None, **values)
    except KeyboardInterrupt:
        print("\nm2f batch: interrupted; what was finished stays done: run the same command to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BatchError, ValueError, FileNotFoundError, RuntimeError, ImportError, OSError) as err:
        print(f"m2f batch: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USAGE
    for problem in report.problems:
        print(f"m2f batch: {problem}", file=sys.stderr)
    if args.json:
        for record in report.inputs:
            print(json.dumps(record, sort_keys=True))
        print(json.dumps({"run": report.run, "frames": report.frames, "wall_s": round(report.wall_s, 3),
                          "frames_per_s": round(report.fps, 3), "workers": report.workers}))  # fmt: skip
    print(f"m2f batch: {report.summary()}", file=sys.stderr)
    if report.failed and len(report.failed) == len(report.inputs):
        return EXIT_USAGE
    return EXIT_SOME_FAILED if report.failed or report.problems else EXIT_OK
