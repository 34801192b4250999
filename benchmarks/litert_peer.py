"""The off-the-shelf peer a street-scene user would pick instead: Coral's int8 DeepLab (MobileNet-EdgeTPU backbone,
trained on Cityscapes) through LiteRT, its 19 Cityscapes classes mapped onto CamVid's 11.

    peer = LiteRtDeepLab(path, threads=2)
    labels, stages = peer.predict(frame_bgr)      # (h, w) CamVid ids at the frame's size, stage times in ms

The frame is letterboxed into the model's 513x513 input exactly as our static artifacts letterbox theirs
(``runtimes.geometry``: aspect kept, padded bottom/right), the model's argmax label map is cropped to the
resized region and brought back to the frame by nearest neighbour, then mapped to CamVid ids. Cityscapes has
no "void" here: every pixel gets a CamVid class, and CamVid's void pixels are ignored by the metric as for ours.

The mapping (``CITYSCAPES_TO_CAMVID``) is CamVid's own suggestion (``classes.csv``, column
``suggested_cityscapes_trainIds``: wall -> Building, terrain -> Tree, traffic light/sign -> SignSymbol, truck/bus ->
Car, rider/motorcycle/bicycle -> Bicyclist) plus train -> Car, which that column leaves out: CamVid labels trams
and trains as Car (SegNet's 11-class grouping), and the class is rare in both datasets.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.paths import SHARED_ROOT
from runtimes.errors import M2FError
from runtimes.geometry import fit_to_input
from runtimes.vocabulary import VOID
from sdk.postprocess import semantic_from_labels

PEER_FILE = "deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite"
PEER_LABEL = "Coral DeepLab EdgeTPU-slim int8 (Cityscapes → CamVid) on LiteRT"
# Cityscapes trainIds 0..18 in order
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
# CamVid class name -> the Cityscapes classes it takes
CITYSCAPES_TO_CAMVID: dict[str, tuple[str, ...]] = {
    "Sky": ("sky",),
    "Building": ("building", "wall"),
    "Pole": ("pole",),
    "Road": ("road",),
    "Pavement": ("sidewalk",),
    "Tree": ("vegetation", "terrain"),
    "SignSymbol": ("traffic light", "traffic sign"),
    "Fence": ("fence",),
    "Car": ("car", "truck", "bus", "train"),
    "Pedestrian": ("person",),
    "Bicyclist": ("rider", "motorcycle", "bicycle"),
}


class PeerNotAvailable(M2FError, RuntimeError):
    """A peer cannot run here: LiteRT, transformers or a file missing, an architecture HF lacks, or classes that
    are not CamVid's (one class for the HF peers of `benchmarks.peers` and the LiteRT one)."""


def pretrained_dir() -> Path:
    """The LiteRT files' folder: $M2F_PRETRAINED, else ``benchmarks.paths.SHARED_ROOT``/third_party/pretrained."""
    root = os.environ.get("M2F_PRETRAINED")
    return Path(root) if root else SHARED_ROOT / "third_party" / "pretrained"


def default_peer_path() -> Path:
    """The peer model in :func:`pretrained_dir`."""
    return pretrained_dir() / PEER_FILE


def camvid_lookup(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """(19,) uint8: Cityscapes trainId -> index in ``class_names`` (CamVid's 11, in the dataset's order)."""
    missing = [name for name in CITYSCAPES_TO_CAMVID if name not in class_names]
    if missing or len(class_names) != len(CITYSCAPES_TO_CAMVID):
        raise PeerNotAvailable(
            f"the Cityscapes peer maps onto CamVid's 11 classes; this evaluation has {list(class_names)}"
        )
    lut = np.full(len(CITYSCAPES_CLASSES), VOID, dtype=np.uint8)
    for camvid, sources in CITYSCAPES_TO_CAMVID.items():
        for source in sources:
            lut[CITYSCAPES_CLASSES.index(source)] = list(class_names).index(camvid)
    assert (lut != VOID).all(), "every Cityscapes class has a CamVid class"
    return lut


class LiteRtDeepLab:
    """The peer model in LiteRT's interpreter; ``predict`` is serialised by a lock (one interpreter, one thread)."""

    def __init__(self, path: str | Path, class_names: tuple[str, ...] | list[str], threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise PeerNotAvailable(f"the LiteRT peer needs ai-edge-litert: pip install ai-edge-litert ({err})") from err
        path = Path(path)
        if not path.is_file():
            raise PeerNotAvailable(f"no peer model at {path} (set M2F_PRETRAINED to the folder holding {PEER_FILE})")
        self.lut = camvid_lookup(class_names)
        self.interpreter = Interpreter(str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        detail = self.interpreter.get_input_details()[0]
        self.input_index, self.input_dtype = detail["index"], detail["dtype"]
        _, h, w, _ = (int(v) for v in detail["shape"])
        # letterboxed like our static artifacts; padded with the value the model's quantisation reads as 0
        zero = int(detail["quantization"][1]) if detail["quantization"][0] else 128
        self.input_spec = {"resize_policy": "letterbox", "size": [h, w], "pad_bgr": [zero, zero, zero]}
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def predict(self, frame: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """(h, w, 3) uint8 BGR -> ((h, w) uint8 CamVid ids, {"preprocess_ms", "inference_ms", "postprocess_ms"})."""
        t0 = time.perf_counter()
        image, geometry = fit_to_input(frame, self.input_spec)  # (513, 513, 3) BGR
        rgb = np.ascontiguousarray(image[None, :, :, ::-1]).astype(self.input_dtype, copy=False)
        t1 = time.perf_counter()
        with self._lock:
            self.interpreter.set_tensor(self.input_index, rgb)
            self.interpreter.invoke()
            ids = self.interpreter.get_tensor(self.output_index)[0]  # (513, 513) Cityscapes trainIds
        t2 = time.perf_counter()
        labels = self.lut[semantic_from_labels(ids.astype(np.uint8), geometry)]  # (h, w)
        t3 = time.perf_counter()
        return labels, {"preprocess_ms": (t1 - t0) * 1e3, "inference_ms": (t2 - t1) * 1e3,
                        "postprocess_ms": (t3 - t2) * 1e3}  # fmt: skip


def score_peer(dataset: Any, path: str | Path | None = None, threads: int | None = None) -> dict[str, float]:
    """The peer's mIoU on a labelled ``train.data`` dataset with CamVid's classes, every frame
    at its own size; plus its median inference ms."""
    peer = LiteRtDeepLab(path or default_peer_path(), dataset.meta.class_names, threads=threads)
    times = []

    def predict(frame: np.ndarray) -> np.ndarray:
        labels, stages = peer.predict(frame)
        times.append(stages["inference_ms"])
        return labels

    return {**score_at_frame_size(dataset, predict), "inference_ms_p50": float(np.median(times))}


def score_at_frame_size(dataset: Any, predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """mIoU of ``predict`` (a BGR frame -> (h, w) class ids at its size) on every frame of a labelled
    ``train.data`` dataset, scored against the labels at the frame's own size (as a user's frames are)."""
    from train.evaluation.semantic import SemanticEvaluator, semantic_gt_from_sample

    evaluator = SemanticEvaluator(len(dataset.meta.class_names), VOID)
    for i in range(len(dataset)):
        sample = dataset[i]
        frame = np.ascontiguousarray(sample["image"].permute(1, 2, 0).numpy()[..., ::-1])  # RGB tensor -> BGR
        truth = semantic_gt_from_sample(sample["labels"], sample["masks"], sample["iscrowd"], *frame.shape[:2])
        evaluator.update(predict(frame), truth)
    return {"mIoU": evaluator.compute()["mIoU"], "frames": len(dataset)}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.litert_peer --data-root DIR``: the peer's mIoU per CamVid sequence (every frame)."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m benchmarks.litert_peer", description=main.__doc__)
    parser.add_argument("--data-root", required=True, help="CamVid root (SegNet layout)")
    parser.add_argument("--model", type=Path, default=None, help=f"the peer's .tflite (default: {default_peer_path()})")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from train.cross_validate import dataset_sequences
    from train.data import build_dataset

    spec = {"format": "camvid", "root": args.data_root, "split": "trainval"}
    try:
        scores = {
            sequence: score_peer(build_dataset({**spec, "sequences": [sequence]}), args.model, args.threads)
            for sequence in dataset_sequences(spec)
        }
    except (PeerNotAvailable, FileNotFoundError, ValueError) as err:
        print(f"litert_peer: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"model": str(args.model or default_peer_path()), "sequences": scores}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
