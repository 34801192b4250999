"""How to run a batch job: ``BatchOptions``, the one definition ``sdk.batch.batch`` and ``m2f batch`` read (the
command's options are built from its fields). A leaf of the batch code: it imports none of the other batch modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdk.cli_fields import cli_field, replaced

# what each input gets written, by option name (``BatchOptions`` fields); the manifest's job settings list these
OUTPUT_KINDS = ("labels", "overlay", "histograms", "coco", "panoptic")
SUMMARY_FORMATS = ("csv", "parquet")  # OUT/summary.<format>; Parquet through pyarrow (the fleet extra)


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """What a batch job writes for each input, and how its work is cut and spread.

    Outputs per input, under ``OUT/<input's path>/``: ``labels`` (one PNG of class ids per frame,
    ``labels/000000.png``, void 255), ``overlay`` (``overlay.mp4`` for a video, ``overlay.png`` for an image),
    ``histograms`` (``histograms.csv``: per frame, the fraction of pixels of each class), ``coco`` (``coco.json``:
    COCO images, categories and result annotations with RLE masks), ``panoptic`` (``panoptic.json`` and
    ``panoptic/000000.png``, the COCO panoptic format; a panoptic model). Work: an image is one piece, a video
    ``chunk_frames`` frames a piece (0: never split; an overlay keeps its video whole, see docs/batch.md), run by
    ``workers`` workers of ``threads_per_worker`` engine threads each; ``ray``: None runs here, else on Ray Data
    (True: Ray's default, ``RAY_ADDRESS`` or a new local cluster; ``"auto"``: the cluster ``ray start`` runs here;
    or an address). ``retry_failed``: a rerun tries failed inputs again (else only changed ones). ``summary``: the
    table of every input, ``OUT/summary.csv`` or ``OUT/summary.parquet``.
    """

    labels: bool = field(default=True, metadata=cli_field("no label PNGs", flag="--no-labels"))
    overlay: bool = field(default=False, metadata=cli_field("an overlay video per video, an overlay PNG per image"))
    histograms: bool = field(default=False, metadata=cli_field("per-frame class histograms (histograms.csv)"))
    coco: bool = field(default=False, metadata=cli_field("COCO JSON per input (coco.json; needs pycocotools)"))
    panoptic: bool = field(
        default=False, metadata=cli_field("COCO panoptic JSON and PNGs per input (a panoptic model)")
    )
    chunk_frames: int = field(
        default=256, metadata=cli_field("frames per piece of work: longer videos are split over workers (0: never)")
    )
    workers: int | None = field(
        default=None,
        metadata=cli_field("workers, each with its own model", type=int, shown="1 here, the cluster's CPUs on Ray"),
    )
    threads_per_worker: int | None = field(
        default=None,
        metadata=cli_field("engine threads per worker", type=int, shown="the cores here / workers; 1 on Ray"),
    )
    ray: bool | str | None = field(
        default=None,
        metadata=cli_field(
            "run on Ray Data: no ADDRESS for Ray's default (RAY_ADDRESS, else a local cluster), 'auto' for the "
            "cluster `ray start` runs here, or host:port",
            nargs="?",
            const=True,
            type=str,
            metavar="ADDRESS",
        ),
    )
    retry_failed: bool = field(default=False, metadata=cli_field("try inputs that failed before again"))
    summary: str = field(
        default="csv",
        metadata=cli_field(
            "the table of every input: OUT/summary.csv, or OUT/summary.parquet (needs pyarrow)",
            choices=SUMMARY_FORMATS,
            metavar="{" + ",".join(SUMMARY_FORMATS) + "}",
        ),
    )

    def __post_init__(self) -> None:
        if self.chunk_frames < 0:
            raise ValueError(f"chunk_frames must be >= 0 (0: never split a video), got {self.chunk_frames}")
        for name in ("workers", "threads_per_worker"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.summary not in SUMMARY_FORMATS:
            raise ValueError(f"summary must be one of {', '.join(SUMMARY_FORMATS)}, got {self.summary!r}")
        if not any(getattr(self, kind) for kind in OUTPUT_KINDS):
            raise ValueError(f"nothing to write: ask for at least one of {', '.join(OUTPUT_KINDS)}")

    @classmethod
    def of(cls, options: BatchOptions | None = None, **overrides: Any) -> BatchOptions:
        """``options`` (default: the defaults) with ``overrides``; an unknown name raises listing the known ones."""
        return replaced(cls, options, overrides, "batch")

    def outputs(self) -> dict[str, bool]:
        """What each input gets, by kind (``OUTPUT_KINDS``)."""
        return {kind: bool(getattr(self, kind)) for kind in OUTPUT_KINDS}

    def splits_videos(self) -> bool:
        """Whether videos are cut into frame ranges: not with ``chunk_frames`` 0, nor with an overlay (one encoded
        stream in frame order per video: segments of it cannot be joined without encoding the frames again)."""
        return self.chunk_frames > 0 and not self.overlay
