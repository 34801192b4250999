"""The device-side SDK: Segmenter, targets, numpy pre/post-processing, streaming, the `m2f` CLI.

Never imports torch, train/ or compile/: an edge device installs sdk + one runtime.

    import sdk
    seg = sdk.Segmenter("cpu", model="street.onnx")
    result = seg.predict(frame)

Every error the SDK raises for a user's frame, file, machine or stream is an ``sdk.M2FError`` (one ``except``).
"""

__version__ = "0.1.0"

from plugins.msda.openvino_extension import ExtensionUnavailable
from runtimes.base import BackendInputError, DeviceNotAvailable, RuntimeNotAvailable
from runtimes.cuda_memory import CudaError
from runtimes.errors import ArtifactError, CheckpointError, M2FError
from runtimes.geometry import InputSizeError
from sdk.cli_predict import ImageError
from sdk.postprocess import OutputsError
from sdk.preprocess import FrameError
from sdk.results import Instances, SegmentationResult
from sdk.segmenter import Segmenter
from sdk.sources import SourceError, StreamError, StreamTimeoutError
from sdk.stream_options import StreamOptions
from sdk.stream_pipeline import StageError
from sdk.targets import TARGETS, TargetNotAvailable

__all__ = [
    "TARGETS",
    "ArtifactError",
    "BackendInputError",
    "CheckpointError",
    "CudaError",
    "DeviceNotAvailable",
    "ExtensionUnavailable",
    "FrameError",
    "ImageError",
    "InputSizeError",
    "Instances",
    "M2FError",
    "OutputsError",
    "RuntimeNotAvailable",
    "SegmentationResult",
    "Segmenter",
    "SourceError",
    "StageError",
    "StreamError",
    "StreamOptions",
    "StreamTimeoutError",
    "TargetNotAvailable",
    "__version__",
]
