"""Peak memory and time of ``m2f predict`` on one huge image, per commit: the pixel limit and the post-processing's
memory against the decoded frame's size.

    python -m benchmarks.frame_memory --side 30000 --before 7e95407 --out DIR

Writes a grey PNG of ``--side`` x ``--side`` zeros (30000: 876 KB on disk, 2.7 GB decoded as BGR), then for the
working tree (and ``--before``, a ``git worktree`` of that commit, when given) runs, each in its own process:
``m2f predict IMG`` (the default limit: exit status and seconds), ``m2f predict IMG --max-pixels none`` and the same
with ``--out`` (an overlay written). Peak resident memory comes from ``wait4`` of that process. A commit without
``--max-pixels`` runs the two large cases without it. Writes ``frame_memory.md/.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.code_ab import commit_tree, remove_tree

UNLIMITED = ["--max-pixels", "none"]
PREDICT_CASES = {"default limit": [], "limit raised": UNLIMITED, "limit raised, --out": UNLIMITED}


def _run(tree: Path, args: list[str], timeout_s: float) -> dict:
    """One ``m2f predict`` process of ``tree``: exit status, seconds, peak RSS (bytes, from ``wait4``), and the
    last line it wrote to stderr."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli", "predict", *args],
        cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    try:
        stderr = process.stderr.read() if process.stderr else ""
        _, status, usage = os.wait4(process.pid, 0)  # reaped here, so that its own usage can be read
    finally:
        timer.cancel()
    return {"exit": os.waitstatus_to_exitcode(status), "seconds": round(time.perf_counter() - start, 2),
            "peak_rss": usage.ru_maxrss * 1024, "said": (stderr.strip().splitlines() or [""])[-1][:300]}  # fmt: skip


def _measure(tree: Path, image: Path, out: Path, timeout_s: float) -> dict[str, dict]:
    has_limit = "--max-pixels" in (tree / "sdk" / "cli_predict.py").read_text()
    rows = {}
    for case, extra in PREDICT_CASES.items():
        args = [str(image), *(extra if has_limit else [])]
        if case.endswith("--out"):
            args += ["--out", str(out / tree.name)]
        rows[case] = _run(tree, args, timeout_s)
    return rows


def main(argv: list[str] | None = None) -> int:
    from runtimes.cpu_features import cpu_features

    parser = argparse.ArgumentParser(prog="python -m benchmarks.frame_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=30000, help="the image's width and height in pixels")
    parser.add_argument("--before", help="a commit to measure beside the working tree")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per m2f predict")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    decoded = args.side * args.side * 3
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"grey_{args.side}.png"
        cv2.imwrite(str(image), np.zeros((args.side, args.side), np.uint8))
        trees = {"working tree": commit_tree(None, Path(tmp))}
        if args.before:
            trees[args.before] = commit_tree(args.before, Path(tmp))
        try:
            results = {
                name: _measure(tree, image, Path(tmp) / "overlays", args.timeout) for name, tree in trees.items()
            }
        finally:
            for tree in trees.values():
                remove_tree(tree)
        file_bytes = image.stat().st_size
    report = {"cpu": cpu_features().describe(), "side": args.side, "file_bytes": file_bytes,
              "decoded_bgr_bytes": decoded, "results": results}  # fmt: skip
    (args.out / "frame_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# m2f predict of a {args.side}x{args.side} grey PNG ({file_bytes / 1e3:.0f} KB; {decoded / 1e9:.2f} GB "
        "decoded as BGR)",
        "",
        f"CPU: {report['cpu']}. Command: `python -m benchmarks.frame_memory --side {args.side}"
        f"{f' --before {args.before}' if args.before else ''} --out DIR`.",
        "A commit without `--max-pixels` runs the two 'limit raised' cases without it (it had no limit).",
        "",
        "| code | case | exit | seconds | peak RSS (GB) | peak / decoded | last message |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for case, row in rows.items():
            peak = row["peak_rss"]
            ratio = f"{peak / decoded:.2f}" if peak else "-"
            size = f"{peak / 1e9:.2f}" if peak else "-"
            said = row["said"].replace("|", "/")
            lines.append(f"| {name} | {case} | {row['exit']} | {row['seconds']} | {size} | {ratio} | {said} |")
    (args.out / "frame_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
