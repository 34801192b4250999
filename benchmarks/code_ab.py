"""Before/after for a code change: the same model and frames through ``Segmenter`` of two commits, interleaved.

    python -m benchmarks.code_ab --before 66de9d7 --images ../shared/data/camvid/val --out DIR

Each side is a warm worker process importing the project from its own tree (``git worktree`` of ``--before``; the
working tree for ``--after`` unless a commit is given) and running the same artifact (``--model``, default the
packaged fp32 one of the working tree) on the same frames; rounds alternate between the two sides, so a busy
machine slows both alike. Reports the median ``inference_ms`` and end-to-end ms of each side, their ratio, what
each side ran (runtime, precision) and the CPU. Writes ``code_ab.md/.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cpu_precisions import add_timing_arguments
from benchmarks.paths import REPO_ROOT
from runtimes.vocabulary import image_files

# the worker: one Segmenter, then one JSON line of timings per "round" line on stdin
_WORKER = r"""
import json, sys, time
import cv2, numpy as np
import sdk
target, model, precision, paths = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4:]
frames = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths]
seg = sdk.Segmenter(target, model=model, precision=precision)
seg.predict(frames[0])
print(json.dumps({"ready": True, "sdk": sdk.__file__, "runtime": seg.runtime, "precision": seg.precision}), flush=True)
for _ in sys.stdin:
    infer, total, labels = [], [], []
    for frame in frames:
        start = time.perf_counter()
        result = seg.predict(frame)
        total.append((time.perf_counter() - start) * 1000)
        infer.append(result.timings["inference_ms"])
        labels.append(int(np.asarray(result.semantic, dtype=np.int64).sum()))
    print(json.dumps({"inference_ms": infer, "end_to_end_ms": total, "labels": labels}), flush=True)
"""


class Side:
    """One tree's warm worker process."""

    def __init__(self, name: str, tree: Path, args: argparse.Namespace, frames: list[Path]) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
        command = [sys.executable, "-c", _WORKER, args.target, str(args.model), args.precision or ""]
        self.name = name
        self.process = subprocess.Popen(
            [*command, *map(str, frames)], cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.facts = self._line()
        if not self.facts.get("sdk", "").startswith(str(tree)):
            raise RuntimeError(f"{name}: imported sdk from {self.facts.get('sdk')}, not from {tree}")
        self.inference_ms: list[float] = []
        self.end_to_end_ms: list[float] = []
        self.labels: list[int] = []

    def _line(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the worker ended (exit {self.process.wait()})")
        return json.loads(line)

    def round(self) -> None:
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        got = self._line()
        self.inference_ms += got["inference_ms"]
        self.end_to_end_ms += got["end_to_end_ms"]
        self.labels = got["labels"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def commit_tree(rev: str | None, folder: Path) -> Path:
    """The working tree for None, else a detached worktree of ``rev`` under ``folder``."""
    if rev is None:
        return REPO_ROOT
    path = folder / rev.replace("/", "_")
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO_ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return path


def remove_tree(tree: Path) -> None:
    """Undo ``commit_tree`` (nothing for the working tree)."""
    if tree != REPO_ROOT:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    from runtimes.cpu_features import cpu_features
    from sdk.artifact_choice import default_model

    parser = argparse.ArgumentParser(prog="python -m benchmarks.code_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit before the change")
    parser.add_argument("--after", default=None, help="the commit after it (default: the working tree)")
    parser.add_argument("--model", type=Path, default=None, help="artifact both sides run (default: packaged fp32)")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--precision", default=None, help="default: what each side's Segmenter picks")
    add_timing_arguments(parser, frames=10, rounds=6, out_required=True)
    args = parser.parse_args(argv)
    args.model = (args.model or default_model("fp32")).resolve()
    frames = [p.resolve() for p in image_files(args.images)[: args.frames]]
    if not frames:
        parser.error(f"no images in {args.images}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": commit_tree(args.before, Path(tmp)), "after": commit_tree(args.after, Path(tmp))}
        try:
            sides = [Side(name, tree, args, frames) for name, tree in trees.items()]
            started = time.time()
            for index in range(args.rounds):
                for side in sides if index % 2 == 0 else sides[::-1]:
                    side.round()
            for side in sides:
                side.close()
        finally:
            for tree in trees.values():
                remove_tree(tree)
    rows = {
        side.name: {
            "commit": args.before if side.name == "before" else (args.after or "working tree"),
            "runtime": side.facts["runtime"],
            "precision": side.facts["precision"],
            "inference_ms": float(np.median(side.inference_ms)),
            "end_to_end_ms": float(np.median(side.end_to_end_ms)),
        }
        for side in sides
    }
    report = {
        "cpu": cpu_features().describe(),
        "model": str(args.model),
        "frames": len(frames),
        "rounds": args.rounds,
        "wall_s": round(time.time() - started, 1),
        "sides": rows,
        "after_over_before_inference": rows["after"]["inference_ms"] / rows["before"]["inference_ms"],
        "labels_equal": sides[0].labels == sides[1].labels,
    }
    lines = [
        f"Before/after ({report['cpu']}; {args.threads} threads; {len(frames)} frames x "
        f"{args.rounds} interleaved rounds; model {args.model.name})",
        "",
        "| side | commit | runtime | precision | inference ms (median) | end to end ms (median) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {row['commit']} | {row['runtime']} | {row['precision']} | {row['inference_ms']:.1f} | "
            f"{row['end_to_end_ms']:.1f} |"
            for name, row in rows.items()
        ),
        "",
        f"after / before (inference): {report['after_over_before_inference']:.3f}; labels of the last round equal: "
        f"{report['labels_equal']}",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "code_ab.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "code_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
