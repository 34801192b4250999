"""Every error the SDK explains, in one place: each is an ``M2FError`` (one ``except`` catches them all) and is
re-exported as ``sdk.<Name>``. Each is defined where it is raised (the runtimes, the plugin loader, the stream);
this module only gathers them."""

from plugins.msda.openvino_extension import ExtensionUnavailable
from runtimes.base import BackendInputError, DeviceNotAvailable, RuntimeNotAvailable
from runtimes.cuda_memory import CudaError
from runtimes.errors import ArtifactError, CheckpointError, M2FError
from runtimes.geometry import InputSizeError
from sdk.batch_manifest import BatchError
from sdk.cli_predict import ImageError
from sdk.postprocess import OutputsError
from sdk.preprocess import FrameError
from sdk.sources import SourceError, StreamError, StreamTimeoutError
from sdk.stream_pipeline import StageError
from sdk.targets import TargetNotAvailable

__all__ = [
    "ArtifactError",
    "BackendInputError",
    "BatchError",
    "CheckpointError",
    "CudaError",
    "DeviceNotAvailable",
    "ExtensionUnavailable",
    "FrameError",
    "ImageError",
    "InputSizeError",
    "M2FError",
    "OutputsError",
    "RuntimeNotAvailable",
    "SourceError",
    "StageError",
    "StreamError",
    "StreamTimeoutError",
    "TargetNotAvailable",
]
