"""The device-side SDK: Segmenter, targets, numpy pre/post-processing, streaming, the `m2f` CLI.

Never imports torch, train/ or compile/: an edge device installs sdk + one runtime.

    import sdk
    seg = sdk.Segmenter("cpu", model="street.onnx")
    result = seg.predict(frame)
"""

__version__ = "0.1.0"

from sdk.results import Instances, SegmentationResult
from sdk.segmenter import Segmenter
from sdk.targets import TARGETS, TargetNotAvailable

__all__ = ["TARGETS", "Instances", "SegmentationResult", "Segmenter", "TargetNotAvailable", "__version__"]
