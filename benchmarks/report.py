"""Benchmark report: Markdown table (+ profile), CSV, JSON and a latency-vs-agreement plot, with ratios to HF eager.

Files written to the output folder: ``benchmark.md``, ``benchmark.csv``, ``benchmark.json``, ``benchmark.png``
and, when rows were profiled, ``profile.md``. Every figure of a row is also given as a ratio to the HF eager
row (``*_vs_hf_eager`` in the CSV; speed-ups in the table, where larger is better).
"""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BASELINE = "hf-eager-fp32"
SECOND_BASELINE = "hf-openvino-fp32"
PEER_BASELINE = "litert-deeplab-int8"  # the off-the-shelf street model (benchmarks.litert_peer)
FIGURES = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "cpu_ms", "fps", "stream_fps", "peak_rss_mb", "rss_delta_mb")
CSV_COLUMNS = (
    "id",
    "label",
    "target",
    "runtime",
    "precision",
    "status",
    *FIGURES,
    "preprocess_ms",
    "inference_ms",
    "postprocess_ms",
    "agreement",
    "model_agreement",
    "mIoU",
    *(f"{k}_vs_hf_eager" for k in FIGURES),
    "p50_speedup_vs_hf_eager",
    "p50_speedup_vs_hf_openvino",
    "mIoU_minus_hf_eager",
    "agreement_minus_hf_eager",
    "p50_speedup_vs_litert_peer",
    "mIoU_minus_litert_peer",
    "exporter",
    "ov_inference_precision",
    "load_avg_1min",
    "load_s",
    "export_s",
    "error",
)
PACKAGES = ("torch", "onnxruntime", "openvino", "transformers", "nncf", "numpy")


def environment(threads: int) -> dict[str, Any]:
    """Machine and package versions, for the report header."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "versions": versions,
    }


def add_ratios(rows: list[dict]) -> None:
    """Fill ``<figure>_vs_hf_eager`` (row / HF eager) and the p50 speed-ups (baseline / row) in place."""
    by_id = {r["id"]: r for r in rows if "error" not in r}
    base, second, peer = by_id.get(BASELINE), by_id.get(SECOND_BASELINE), by_id.get(PEER_BASELINE)
    for row in rows:
        row["status"] = "error" if "error" in row else "ok"
        if "error" in row:
            continue
        for key in FIGURES:
            if base and _num(row.get(key)) and _num(base.get(key)):
                row[f"{key}_vs_hf_eager"] = row[key] / base[key]
        if base and _num(base.get("p50_ms")):
            row["p50_speedup_vs_hf_eager"] = base["p50_ms"] / row["p50_ms"]
        if second and _num(second.get("p50_ms")):
            row["p50_speedup_vs_hf_openvino"] = second["p50_ms"] / row["p50_ms"]
        for key in ("mIoU", "agreement"):
            if base and _num(row.get(key)) and _num(base.get(key)):
                row[f"{key}_minus_hf_eager"] = row[key] - base[key]
        if peer and _num(peer.get("p50_ms")):
            row["p50_speedup_vs_litert_peer"] = peer["p50_ms"] / row["p50_ms"]
        if peer and _num(row.get("mIoU")) and _num(peer.get("mIoU")):
            row["mIoU_minus_litert_peer"] = row["mIoU"] - peer["mIoU"]


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value != 0


def _f(value: Any, fmt: str = ".1f", suffix: str = "") -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:{fmt}}{suffix}"


def _notes(row: dict) -> str:
    if "error" in row:
        return "**error**: " + _one_line(row["error"], 160)
    notes = []
    if row.get("exporter"):
        notes.append(f"exported with torch.onnx {row['exporter']} exporter")
    if row.get("export_errors"):
        notes.append("; ".join(f"{k} exporter failed: {_one_line(v, 90)}" for k, v in row["export_errors"].items()))
    if row.get("model_agreement") is not None:
        notes.append(f"raw outputs through the official post-processing agree {100 * row['model_agreement']:.2f}%")
    if row.get("ov_inference_precision") and row["ov_inference_precision"] != "f32":
        notes.append(f"OpenVINO inference precision {row['ov_inference_precision']}")
    if row.get("stream_error"):
        notes.append("stream: " + _one_line(row["stream_error"], 80))
    for error in row.get("round_errors") or ():
        notes.append(_one_line(error, 80))
    return "; ".join(notes)


def _vs_peer(row: dict) -> str:
    if row.get("p50_speedup_vs_litert_peer") is None or row["id"] == PEER_BASELINE:
        return "–"
    delta = row.get("mIoU_minus_litert_peer")
    return f"{row['p50_speedup_vs_litert_peer']:.2f}×" + (f", {delta:+.2f}" if isinstance(delta, float) else "")


def _one_line(text: str, limit: int) -> str:
    line = " ".join(re.sub(r"Exception from src/\S+:\d+:", "", str(text)).split())
    return (line[: limit - 1] + "…") if len(line) > limit else line


def stability_lines(rows: Sequence[dict]) -> list[str]:
    """With ``--video``: flicker on unchanged pixels and flow consistency per row, stabiliser off / on."""
    measured = [r for r in rows if r.get("flicker_unchanged_pct") is not None]
    if not measured:
        return []
    lines = [
        "Temporal stability over the video's frames in order (`sdk.stability`; stabiliser off / on):",
        "",
        "| runtime | precision | flicker on unchanged px % | flow consistency % |",
        "|---|---|---|---|",
    ]
    for r in measured:
        flicker = f"{_f(r['flicker_unchanged_pct'], '.2f')} / {_f(r.get('flicker_unchanged_pct_stabilized'), '.2f')}"
        flow = f"{_f(r.get('flow_consistency_pct'), '.2f')} / {_f(r.get('flow_consistency_pct_stabilized'), '.2f')}"
        lines.append(f"| {r['label']} | {r['precision']} | {flicker} | {flow} |")
    return [*lines, ""]


def markdown_table(rows: Sequence[dict]) -> str:
    """The performance table (one line per row; errors in the notes column)."""
    header = (
        "| runtime | precision | p50 ms | p90 ms | p99 ms | CPU s / frame | FPS | stream FPS | peak RSS MB (Δ) "
        "| agreement % | mIoU | speed-up vs HF eager | vs HF→OpenVINO | memory vs HF eager "
        "| vs LiteRT peer: speed-up, mIoU ± | notes |"
    )
    lines = [header, "|" + "---|" * 16]
    for r in rows:
        ok = "error" not in r
        memory = f"{_f(r.get('peak_rss_mb'), '.0f')} ({_f(r.get('rss_delta_mb'), '.0f')})" if ok else "–"
        lines.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    r["precision"],
                    _f(r.get("p50_ms")),
                    _f(r.get("p90_ms")),
                    _f(r.get("p99_ms")),
                    _f(r["cpu_ms"] / 1000 if isinstance(r.get("cpu_ms"), float) else None, ".2f"),
                    _f(r.get("fps"), ".2f"),
                    _f(r.get("stream_fps"), ".2f"),
                    memory,
                    _f(100 * r["agreement"], ".2f") if isinstance(r.get("agreement"), float) else "–",
                    _f(r.get("mIoU"), ".2f"),
                    _f(r.get("p50_speedup_vs_hf_eager"), ".2f", "×"),
                    _f(r.get("p50_speedup_vs_hf_openvino"), ".2f", "×"),
                    _f(r.get("rss_delta_mb_vs_hf_eager"), ".2f", "×"),
                    _vs_peer(r),
                    _notes(r),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def markdown(rows: Sequence[dict], info: dict) -> str:
    """The whole ``benchmark.md``: header, table, how to read it."""
    env = info["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    h, w = info["input_size"]
    lines = [
        f"# Benchmark: {info['title']}",
        "",
        f"- model: `{info['model']}` ({info['num_classes']} classes, weights: {info['weights']}), task {info['task']}, "
        f"input {h}x{w} (letterboxed), batch 1",
        f"- frames: {info['evaluation']}; {info['runs']} timed runs per row in {info.get('rounds', 1)} round(s), "
        f"{info['warmup']} warm-up runs each; every row in its own process each round, the order rotated by one "
        "row per round",
        f"- machine: {env['cpu']}, {env['cores']} cores, {env['threads']} threads per engine, "
        f"load average at start {env['load_average_at_start']}",
        f"- versions: Python {env['python']}, {versions}",
        f"- int8 calibration: {info['calibration'] or 'none'}",
        *(f"- skipped {line}" for line in info.get("skipped", ())),
        f"- run: {info['started']}, {info['duration_s']} s",
        "",
        markdown_table(rows),
        "",
        *stability_lines(rows),
        "Latency is end to end per frame (BGR frame in, label map at the frame's size out: letterbox, normalisation, "
        "model, post-processing). m2f rows run `sdk.Segmenter.predict`; HF rows run HF's image processor, the model "
        "and `post_process_semantic_segmentation`. CPU s / frame is the process's CPU time (all threads), steadier "
        "than wall time on a busy machine. FPS = 1000 / mean latency; stream FPS = `Segmenter.stream` with decode, "
        "inference and post-processing overlapped. Peak RSS is the row's process (Δ: above the process after "
        "imports, i.e. the model and engine). Agreement = pixels with the same label as the m2f torch fp32 row. "
        "Speed-ups are p50 ratios (larger is faster); memory ratio is Δ / HF eager's Δ. "
        "The CSV's load_avg_1min says how busy the machine was during each row.",
    ]
    return "\n".join(lines) + "\n"


def profile_markdown(rows: Sequence[dict]) -> str | None:
    """Top op types per profiled row, or None when no row was profiled."""
    parts = []
    for r in rows:
        prof = r.get("profile")
        if not prof:
            continue
        parts += [
            f"## {r['label']} {r['precision']} — {prof['engine']}",
            "",
            f"profiled total {prof['per_inference_ms']:.1f} ms per inference (model only)",
            "",
            "| op type | ms / inference | share | nodes | kernels |",
            "|---|---|---|---|---|",
        ]
        for op in prof["ops"]:
            parts.append(
                f"| {op['op']} | {op['ms']:.1f} | {100 * op['share']:.1f}% | {op['count']} | {op.get('exec', '')} |"
            )
        if prof.get("nodes"):
            parts += [
                "",
                "slowest nodes: " + "; ".join(f"`{n['name']}` ({n['op']}) {n['ms']:.1f} ms" for n in prof["nodes"][:5]),
            ]
        parts.append("")
    return ("# Profiles\n\n" + "\n".join(parts)) if parts else None


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _csv_value(r.get(k)) for k in CSV_COLUMNS})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return " ".join(value.split())
    return "" if value is None else value


def write_plot(path: Path, rows: Sequence[dict], title: str) -> None:
    """p50 latency (log x) against agreement with the fp32 reference, and against mIoU when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and isinstance(r.get("p50_ms"), float)]
    with_miou = [r for r in ok if isinstance(r.get("mIoU"), float) and math.isfinite(r["mIoU"])]
    panels = [("agreement", "label agreement with m2f torch fp32 (%)", 100.0)]
    if with_miou:
        panels.append(("mIoU", "mIoU (%)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (key, ylabel, scale) in zip(axes[0], panels, strict=True):
        points = [r for r in ok if isinstance(r.get(key), float)]
        for r in points:
            marker = "s" if r["family"] == "hf" else "o"
            ax.scatter(r["p50_ms"], scale * r[key], marker=marker, s=60)
            ax.annotate(
                f"{r['label']} {r['precision']}",
                (r["p50_ms"], scale * r[key]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per frame (ms, log scale; left is faster)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    failed = [f"{r['label']} {r['precision']}" for r in rows if "error" in r]
    fig.suptitle(title + (f"\nfailed: {', '.join(failed)}" if failed else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, rows: list[dict], info: dict) -> dict[str, Path]:
    """Write every report file to ``out``; returns {kind: path}. A missing matplotlib skips only the plot."""
    out.mkdir(parents=True, exist_ok=True)
    add_ratios(rows)
    files = {"md": out / "benchmark.md", "csv": out / "benchmark.csv", "json": out / "benchmark.json"}
    files["md"].write_text(markdown(rows, info))
    write_csv(files["csv"], rows)
    files["json"].write_text(json.dumps({"run": info, "rows": rows}, indent=1, default=str))
    profile = profile_markdown(rows)
    if profile:
        files["profile"] = out / "profile.md"
        files["profile"].write_text(profile)
    try:
        write_plot(out / "benchmark.png", rows, info["title"])
        files["png"] = out / "benchmark.png"
    except ImportError as err:
        logger.warning("no plot (pip install matplotlib): %s", err)
    logger.info("wrote %s", ", ".join(str(p) for p in files.values()))
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.report DIR``: render the report files again from ``DIR/benchmark.json``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data = json.loads((args.folder / "benchmark.json").read_text())
    write_report(args.folder, data["rows"], data["run"])
    print(markdown_table(data["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
