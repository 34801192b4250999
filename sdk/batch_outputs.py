"""What a batch job writes: a unit's per-frame files and parts (``UnitWriter``), and an input's files assembled from
its units' parts once every unit is in, after its frames were checked to be each there exactly once (``assemble``).

Per input, under ``OUT/<folder>/``: ``labels/000000.png`` (class ids, void 255; 16-bit where there are more than
255 classes), ``overlay.mp4`` / ``overlay.png``, ``histograms.csv``, ``coco.json``, ``panoptic.json`` with
``panoptic/000000.png``. File names count frames as the decoder numbers them, from 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtimes.vocabulary import VOID
from sdk.batch_manifest import MANIFEST_DIR, Manifest, atomic_write, csv_text, label_name
from sdk.batch_options import BatchOptions
from sdk.batch_plan import Input, Unit
from sdk.results import SegmentationResult


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` as PNG (label maps of more than 256 values as 16-bit)."""
    if image.dtype != np.uint8 and image.ndim == 2:
        image = np.where(image < VOID, image, VOID).astype(np.uint16) if image.max(initial=0) < 65536 else image
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.dtype} image of shape {image.shape} as PNG")
    return encoded.tobytes()


class UnitWriter:
    """One unit's outputs as its frames come: per-frame files straight into the input's folder (each whole or not at
    all), its share of the per-input files as parts in the manifest; ``record()`` says what it wrote."""

    def __init__(self, manifest: Manifest, unit: Unit, options: BatchOptions) -> None:
        self.manifest, self.unit, self.options = manifest, unit, options
        self.folder = manifest.out / unit.folder
        self.first: int | None = None
        self.count = 0
        self.size: tuple[int, int] | None = None
        self.inference_ms = 0.0
        self.rows: list[list[Any]] = []
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.segments: list[dict[str, Any]] = []
        self.files: dict[str, int] = {}

    def add(self, number: int, result: SegmentationResult, frame: np.ndarray | None = None) -> None:
        """Frame ``number``'s result (``frame``: the image itself, for an image's overlay)."""
        expected = self.unit.start if self.first is None else self.first + self.count
        if number != expected:
            raise ValueError(f"the decoder gave frame {number} where frame {expected} was due (skipped or repeated)")
        if self.first is None:
            self.first = number
        self.count += 1
        self.size = result.size
        self.inference_ms += float(result.timings.get("inference_ms", 0.0))
        name = label_name(number)
        if self.options.labels:
            atomic_write(self.folder / "labels" / name, png_bytes(np.asarray(result.semantic)))
        if self.options.overlay and frame is not None:
            path = self.folder / "overlay.png"
            self._own(path, atomic_write(path, png_bytes(result.overlay(frame))))
        height, width = result.size
        image = {"id": number, "width": width, "height": height, "file_name": Path(self.unit.path).name}
        if self.unit.kind == "video":
            image["frame"] = number
        if self.options.histograms:
            histogram = result.class_histogram()
            self.rows.append([number, *(round(histogram.get(c, 0.0), 6) for c in result.class_names)])
        if self.options.coco:
            self.images.append(image)
            self.annotations.extend(result.to_coco(number))
        if self.options.panoptic:
            ids, annotation = result.to_coco_panoptic(number, f"panoptic/{name}")
            atomic_write(self.folder / "panoptic" / name, png_bytes(ids))
            self.segments.append({"image": image, **annotation})

    def adopt_overlay(self, temp: Path) -> None:
        """The finished overlay video of the whole input (written by the stream under a temporary name) in place."""
        final = self.folder / "overlay.mp4"
        os.replace(temp, final)
        self._own(final, final.stat().st_size)

    def _own(self, path: Path, size: int) -> None:
        self.files[path.relative_to(self.manifest.out).as_posix()] = size

    def record(self, status: str = "done", note: str | None = None, ended_short: bool = False) -> dict[str, Any]:
        """The unit's record (its parts written first when done)."""
        if status == "done":
            self._write_parts()
        unit = self.unit
        return {
            **unit.to_dict(),
            "status": status,
            "note": note,
            "first": self.first if self.first is not None else unit.start,
            "frames": self.count,
            "ended_short": ended_short,
            "height": self.size[0] if self.size else None,
            "width": self.size[1] if self.size else None,
            "inference_ms": round(self.inference_ms / self.count, 3) if self.count else None,
            "files": self.files,
        }

    def _write_parts(self) -> None:
        key, start = self.unit.key, self.unit.start
        parts: dict[str, bytes] = {}
        if self.options.histograms:
            parts["hist.csv"] = csv_text(None, self.rows).encode()  # rows only: the header is the input's
        if self.options.coco:
            parts["coco.json"] = json.dumps({"images": self.images, "annotations": self.annotations}).encode()
        if self.options.panoptic:
            parts["panoptic.json"] = json.dumps(self.segments).encode()
        for kind, data in parts.items():
            path = self.manifest.part_path(key, start, kind)
            self._own(path, atomic_write(path, data))


# ---------------------------------------------------------------------------------------------------------------
# an input, assembled from its units


def frames_problem(records: Sequence[Mapping[str, Any]], labels: Path | None) -> str | None:
    """Why an input's units do not add up to every frame from 0 exactly once, or None. ``records``: its units in
    order; a unit that ended short of its range is the end of the file only if no later unit has a frame.
    ``labels``: its label folder, whose files must be exactly the frames'."""
    next_frame, short_at = 0, None
    for record in records:
        count, first = int(record["frames"]), int(record["first"])
        if count == 0:
            short_at = record["start"] if short_at is None else short_at
            continue
        if short_at is not None:
            return (
                f"frames {short_at} to {first - 1} cannot be decoded although frame {first} can: the file is "
                f"corrupt from frame {short_at}"
            )
        if first != next_frame:
            return f"frame {next_frame} was due, frame {first} came (frames missing or repeated)"
        next_frame = first + count
        if record["ended_short"]:
            short_at = next_frame
    if next_frame == 0:
        return "not one frame could be decoded: corrupt or not a video"
    if labels is not None:
        names = {p.name for p in labels.iterdir() if not p.name.startswith(".")} if labels.is_dir() else set()
        wanted = {label_name(frame) for frame in range(next_frame)}
        if names != wanted:
            return f"{len(wanted - names)} label files missing and {len(names - wanted)} unexpected in {labels}"
    return None


def assemble(
    manifest: Manifest,
    item: Input,
    units: Sequence[Unit],
    records: Mapping[int, Mapping[str, Any]],
    options: BatchOptions,
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """An input's record from its units' records. When every frame is there exactly once its per-input files are
    written from the parts (``status`` done; ``note`` says where the header miscounted), else ``status`` is
    failed and ``note`` says why."""
    ordered = [records[unit.start] for unit in units]
    header = units[0].frames_in_header
    frames = sum(int(r["frames"]) for r in ordered)
    busy = sum(float(r.get("seconds") or 0.0) for r in ordered)
    failed = next((r for r in ordered if r["status"] != "done"), None)
    labels = manifest.out / item.folder / "labels" if options.labels else None
    problem = failed["note"] if failed is not None else frames_problem(ordered, labels)
    files = {name: size for r in ordered for name, size in r["files"].items() if not name.startswith(MANIFEST_DIR)}
    note = problem
    if problem is None:
        files.update(_merge(manifest, item, ordered, options, metadata))
        if header is not None and item.kind == "video" and header != frames:
            note = f"decoded {frames} frames, the container header says {header}"
    timed = [(float(r["inference_ms"]), int(r["frames"])) for r in ordered if r.get("inference_ms") is not None]
    return {
        "key": item.key,
        "input": item.path,
        "kind": item.kind,
        "folder": item.folder,
        "output": item.folder,
        "fingerprint": units[0].fingerprint,
        "status": "failed" if problem else "done",
        "note": note,
        "frames": frames,
        "frames_in_header": header,
        "height": next((r["height"] for r in ordered if r.get("height")), None),
        "width": next((r["width"] for r in ordered if r.get("width")), None),
        "units": len(ordered),
        "busy_s": round(busy, 3),
        "frames_per_s": round(frames / busy, 2) if busy > 0 else None,
        "inference_ms": round(sum(ms * n for ms, n in timed) / sum(n for _, n in timed), 3) if timed else None,
        "workers": sorted({str(r.get("worker")) for r in ordered}),
        "files": files,
    }


def failed_record(item: Input, note: str) -> dict[str, Any]:
    """The record of an input that failed before any work (unreadable, not a video, frames over the limit)."""
    return {"key": item.key, "input": item.path, "kind": item.kind, "folder": item.folder, "output": item.folder,
            "status": "failed", "note": note, "frames": 0, "units": 0, "files": {}}  # fmt: skip


def _merge(
    manifest: Manifest,
    item: Input,
    records: Sequence[Mapping[str, Any]],
    options: BatchOptions,
    metadata: Mapping[str, Any],
) -> dict[str, int]:
    """The per-input files from the units' parts, in frame order; their sizes by path under OUT."""
    folder = manifest.out / item.folder
    names = list(metadata["class_names"])
    things = {int(i) for i in metadata.get("thing_ids", ())}
    categories = [{"id": i, "name": name, "isthing": int(i in things)} for i, name in enumerate(names)]

    def part(record: Mapping[str, Any], kind: str) -> bytes:
        return manifest.part_path(item.key, int(record["start"]), kind).read_bytes()

    written: dict[str, bytes] = {}
    if options.histograms:
        rows = b"".join(part(r, "hist.csv") for r in records)
        written["histograms.csv"] = csv_text(["frame", *names], []).encode() + rows
    if options.coco:
        chunks = [json.loads(part(r, "coco.json")) for r in records]
        annotations = [a for chunk in chunks for a in chunk["annotations"]]
        for number, annotation in enumerate(annotations, 1):
            annotation["id"] = number
        coco = {"images": [i for c in chunks for i in c["images"]], "annotations": annotations}
        written["coco.json"] = json.dumps({**coco, "categories": categories}).encode()
    if options.panoptic:
        frames = [f for r in records for f in json.loads(part(r, "panoptic.json"))]
        images = [frame.pop("image") for frame in frames]
        panoptic = {"images": images, "annotations": frames, "categories": categories}
        written["panoptic.json"] = json.dumps(panoptic).encode()
    sizes = {}
    for name, data in written.items():
        sizes[f"{item.folder}/{name}"] = atomic_write(folder / name, data)
    return sizes
