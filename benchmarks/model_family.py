"""The packaged models on the speed/accuracy front, beside the LiteRT peer: one table and one chart.

    m2f benchmark family --images ../shared/data/camvid/val --frames 20 --rounds 4 \
        --out benchmarks/results/issue39_family
    python -m benchmarks.model_family ...   # the same without the m2f entry point

Speed is measured here, in this run, on the same frames: every packaged model as ``Segmenter("cpu", model=NAME)``
runs it and the peer, each row alone in its own process (rounds rotated), then all interleaved in one process
(``benchmarks.cpu_precisions --models``). Accuracy is each model's held-out figure from the registry
(``sdk/models/registry.json``: leave-one-sequence-out mIoU, int8 as shipped, the peer on the same frames; each names
the command and results that made it), never the frames timed here. Writes ``model_family.md/.json/.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import cpu_precisions
from benchmarks.artifact_rows import named_artifact
from sdk.model_registry import named_models

HELD_OUT = "held_out_miou"


def family_table(alone: dict, interleaved: dict) -> list[dict]:
    """One row per model and the peer: latency (both ways, and as a ratio to the peer) and held-out mIoU."""
    models = named_models()
    rows = []
    for label, timing in alone["rows"].items():
        figure = models[label].figures.get(HELD_OUT, {}) if label in models else {}
        if label == cpu_precisions.PEER_ROW:  # the peer's held-out figure: measured beside each model, the same
            figure = {"value": next((m.figures[HELD_OUT]["peer"] for m in models.values() if HELD_OUT in m.figures),
                                    None)}  # fmt: skip
        rows.append({
            "row": label,
            "runs": Path(named_artifact(label, None)).name if label in models else "",
            "end_to_end_ms": timing["end_to_end_ms"],
            "vs_peer_alone": timing["end_to_end_vs_base"],
            "vs_peer_interleaved": interleaved["rows"][label]["end_to_end_vs_base"],
            "held_out_miou": figure.get("value"),
            "held_out_source": figure.get("source", ""),
        })  # fmt: skip
    return rows


def markdown(rows: list[dict], alone: dict) -> str:
    lines = [
        f"CPU: {alone['cpu']}; {alone['threads']} threads; {alone['frames']} frames per row; end-to-end medians.",
        "",
        "| model | file it runs here | end to end ms (own process) | / peer (own process) | / peer (interleaved) "
        "| held-out mIoU |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        miou = f"{row['held_out_miou']:.2f}" if row["held_out_miou"] is not None else "not measured"
        lines.append(f"| {row['row']} | {row['runs'] or '-'} | {row['end_to_end_ms']:.1f} | {row['vs_peer_alone']:.2f} "
                     f"| {row['vs_peer_interleaved']:.2f} | {miou} |")  # fmt: skip
    lines += ["", "Held-out figures (leave-one-sequence-out mean, int8 as shipped) from:"]
    lines += sorted({f"- {row['row']}: {row['held_out_source']}" for row in rows if row["held_out_source"]})
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], cpu: str, path: Path) -> bool:
    """Latency against held-out mIoU, one point per row with a figure; False where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if row["held_out_miou"] is None:
            continue
        peer = row["row"] == cpu_precisions.PEER_ROW
        ax.scatter(row["end_to_end_ms"], row["held_out_miou"], marker="s" if peer else "o", color="grey" if peer
                   else "tab:blue")  # fmt: skip
        ax.annotate(row["row"], (row["end_to_end_ms"], row["held_out_miou"]), textcoords="offset points",
                    xytext=(5, 5))  # fmt: skip
    ax.set_xlabel("end-to-end ms per frame (median, each in its own process)")
    ax.set_ylabel("held-out mIoU (leave-one-sequence-out)")
    ax.set_title(cpu, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.model_family") -> int:
    """Time every named model and the peer both ways, then write the table and the chart; 2 when the peer cannot run."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="packaged model names (default: every one)")
    cpu_precisions.add_timing_arguments(parser, frames=20, rounds=4, out_required=True)
    args = parser.parse_args(argv)
    common = ["--models", *(args.models or named_models()), "--images", str(args.images), "--frames",
              str(args.frames), "--threads", str(args.threads)]  # fmt: skip
    measured = {}
    for mode, extra in (("alone", []), ("interleaved", ["--in-process"])):
        out = args.out / mode
        if cpu_precisions.main([*common, "--rounds", str(args.rounds), *extra, "--out", str(out)]) != 0:
            return 2
        measured[mode] = json.loads((out / "cpu_precisions.json").read_text())
    if cpu_precisions.PEER_ROW not in measured["alone"]["rows"]:
        print("model_family: the LiteRT peer could not run here: nothing to chart against", flush=True)
        return 2
    rows = family_table(measured["alone"], measured["interleaved"])
    text = markdown(rows, measured["alone"])
    print(text, end="")
    (args.out / "model_family.md").write_text(text)
    (args.out / "model_family.json").write_text(json.dumps({"rows": rows, **measured}, indent=1))
    chart(rows, measured["alone"]["cpu"], args.out / "model_family.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
