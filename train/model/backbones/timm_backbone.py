"""Any timm model as a backbone through ``features_only`` (edge-sized models: ResNet-18, MobileNetV3, ...)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from train.model.backbones.tflite_weights import TFLITE_SUFFIX, load_tflite_weights, read_tflite_weights, tf_style
from train.model.config import TimmConfig


class TimmBackbone(nn.Module):
    """(B, 3, H, W) -> the four timm feature maps at strides 4, 8, 16, 32."""

    strides = (4, 8, 16, 32)

    def __init__(self, config: TimmConfig) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise ImportError("timm backbones need the 'timm' package: pip install timm") from err
        if config.model_name not in timm.list_models():
            raise ValueError(f"timm has no model {config.model_name!r}")
        kwargs = {"out_indices": config.out_indices} if config.out_indices is not None else {}
        if config.weights is not None and Path(config.weights).suffix != TFLITE_SUFFIX:
            raise ValueError(f"backbone weights {config.weights!r}: only {TFLITE_SUFFIX} files are read")
        if config.weights is not None and config.pretrained:
            raise ValueError("backbone: give either weights (a local file) or pretrained=True (timm's download)")
        self.config = config
        self.body = timm.create_model(config.model_name, features_only=True, pretrained=config.pretrained, **kwargs)
        if config.weights is not None:
            tf_style(self.body)  # the architecture the file's weights were trained in
        reductions = list(self.body.feature_info.reduction())
        if config.out_indices is None:  # pick the last map at each of the strides 4, 8, 16, 32
            picks = [max((i for i, r in enumerate(reductions) if r == s), default=-1) for s in self.strides]
        else:
            picks = list(range(len(reductions)))
        if -1 in picks or tuple(reductions[i] for i in picks) != self.strides:
            raise ValueError(
                f"timm {config.model_name} (out_indices {config.out_indices}) gives strides {reductions}; "
                f"Mask2Former needs maps at strides {self.strides}"
            )
        self.picks = picks
        channels = self.body.feature_info.channels()
        self.channels = tuple(channels[i] for i in picks)

    def load_weights(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Load ``config.weights`` into the body; returns the (mean, std) normalisation the file expects, or None."""
        if self.config.weights is None:
            return None
        weights = read_tflite_weights(self.config.weights)
        # a classifier's or DeepLab's head in the file stays unused; DeepLab's atrous last stage loads at stride 32
        load_tflite_weights(self.body, weights, require_all=False, undilate=True)
        return weights.pixel_mean, weights.pixel_std

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.body(x)
        return [features[i] for i in self.picks]
