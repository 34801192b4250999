"""The device-side SDK: Segmenter, targets, numpy pre/post-processing, streaming, the `m2f` CLI.

Never imports torch, train/ or compile/: an edge device installs sdk + one runtime.
"""

__version__ = "0.1.0"
