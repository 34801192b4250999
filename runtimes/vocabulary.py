"""The project's words and fixed facts, defined once: tasks, precisions, the model's input name, its mask stride,
the void label, the image files we read. A torch-free leaf (it imports nothing of ours), so the device side (sdk,
runtimes), the host side (train, compile), the benchmarks and every CLI's ``choices`` read the same values.
``tests/test_one_definition.py`` keeps it the only place they are written. Where a checkout or its shared files are
is not here: it means nothing in a wheel install (the benchmarks' ``benchmarks.paths`` has it)."""

from __future__ import annotations

from pathlib import Path

TASKS = ("semantic", "instance", "panoptic")  # what a Mask2Former artifact outputs
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # what an artifact is compiled at or a runtime lowers it to
# not a precision: int8 from a file whose gate also verified its unquantised ops in bf16 (a speed-order entry and
# offer of sdk.targets.choose_precision; it runs at "int8")
INT8_BF16 = "int8+bf16"
INPUT_NAME = "images"  # the artifact's one input: (N, H, W, 3) uint8 BGR
MASK_STRIDE = 4  # pred_masks are at 1/4 of the padded input
# the official Mask2Former post-processing: panoptic keeps queries scoring over OBJECT_MASK_THRESHOLD whose mask is
# at least OVERLAP_THRESHOLD unoccluded; instance keeps the TOPK best (query, class) pairs
OBJECT_MASK_THRESHOLD = 0.8
OVERLAP_THRESHOLD = 0.8
TOPK = 100
VOID = 255  # the semantic label of pixels without a class (CamVid void, pixels no panoptic segment covers)
CAMVID_VOID = 11  # CamVid's own id for "Unlabelled" (SegNet's ignore label), read as VOID
IMAGE_SUFFIXES = frozenset(  # the still-image files OpenCV reads, lower case
    {".bmp", ".dib", ".jpg", ".jpeg", ".jpe", ".jp2", ".png", ".webp", ".pbm", ".pgm", ".ppm", ".pnm", ".tif", ".tiff"}
)


# the video files a batch job (``m2f batch``) picks from folders and patterns, lower case; a file named explicitly
# is tried whatever its suffix
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})


def image_files(folder: Path, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[Path]:
    """The image files (``IMAGE_SUFFIXES``, or files with other ``suffixes``) under ``folder`` and its subfolders,
    sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
