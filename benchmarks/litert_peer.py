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
from pathlib import Path

import numpy as np

from runtimes.geometry import fit_to_input
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


class PeerNotAvailable(RuntimeError):
    """The peer cannot run here (LiteRT or its file missing, or the evaluation's classes are not CamVid's)."""


def default_peer_path() -> Path:
    """$M2F_PRETRAINED/<file>, else ../shared/third_party/pretrained/<file> beside the repository."""
    root = os.environ.get("M2F_PRETRAINED")
    folder = Path(root) if root else Path(__file__).resolve().parents[2] / "shared" / "third_party" / "pretrained"
    return folder / PEER_FILE


def camvid_lookup(class_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """(19,) uint8: Cityscapes trainId -> index in ``class_names`` (CamVid's 11, in the dataset's order)."""
    missing = [name for name in CITYSCAPES_TO_CAMVID if name not in class_names]
    if missing or len(class_names) != len(CITYSCAPES_TO_CAMVID):
        raise PeerNotAvailable(
            f"the Cityscapes peer maps onto CamVid's 11 classes; this evaluation has {list(class_names)}"
        )
    lut = np.full(len(CITYSCAPES_CLASSES), 255, dtype=np.uint8)
    for camvid, sources in CITYSCAPES_TO_CAMVID.items():
        for source in sources:
            lut[CITYSCAPES_CLASSES.index(source)] = list(class_names).index(camvid)
    assert (lut != 255).all(), "every Cityscapes class has a CamVid class"
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
