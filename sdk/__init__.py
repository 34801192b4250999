"""The device-side SDK: Segmenter, targets, numpy pre/post-processing, streaming, the `m2f` CLI.

Never imports torch, train/ or compile/: an edge device installs sdk + one runtime.

    import sdk
    seg = sdk.Segmenter("cpu", model="street.onnx")
    result = seg.predict(frame)

Every error the SDK raises for a user's frame, file, machine or stream is an ``sdk.M2FError`` (one ``except``).
"""

__version__ = "0.1.0"

from sdk import errors
from sdk.batch import BatchOptions, BatchReport, batch
from sdk.errors import *  # noqa: F403  every error the SDK explains, listed once in sdk.errors.__all__
from sdk.results import Instances, SegmentationResult
from sdk.segmenter import Segmenter
from sdk.stream_options import StreamOptions
from sdk.targets import TARGETS

__all__ = [
    "TARGETS",
    "BatchOptions",
    "BatchReport",
    "Instances",
    "SegmentationResult",
    "Segmenter",
    "StreamOptions",
    "__version__",
    "batch",
    *errors.__all__,
]
