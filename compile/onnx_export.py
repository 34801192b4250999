"""Checkpoint -> ONNX: the export adapter that puts pre- and post-processing into the graph.

The deployed graph takes what a camera gives, uint8 (B, H, W, 3) BGR frames, and does the layout change,
channel order and normalisation itself. For semantic segmentation it also does the official post-processing
(mask logits upsampled to the padded input, the padding cropped, class probabilities x mask probabilities,
argmax), so the device returns a (B, H, W) label map, plus the per-class scores at the mask resolution (a quarter
of the input: 11 x 90 x 120 floats for the default model) for stabilisers that smooth scores over time.
For instance/panoptic it returns the query logits and the low-resolution mask logits; the SDK upsamples only the
queries it keeps.

Multi-scale deformable attention is the pure-torch reference, which lowers to standard ONNX ops (GridSample
in float32) that ONNX Runtime and OpenVINO both run. For TensorRT, ``compile.tensorrt_export`` exports the same
wrapper with MSDA as the plugin node instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from runtimes.vocabulary import INPUT_NAME, VOID
from train.model import Mask2Former, ModelMeta
from train.model.inference import semantic_inference, semantic_labels

logger = logging.getLogger(__name__)

OUTPUTS = {
    "semantic": {
        "labels": "(B, H, W) uint8 class id per pixel at input resolution (official semantic inference)",
        "class_scores": "(B, K, Hp/4, Wp/4) float class-probability x mask-probability scores at the mask resolution "
        "(stride 4 of the input padded to a multiple of 32): what video stabilisers smooth over time",
    },
    "panoptic": {
        "pred_logits": "(B, Q, K+1) class logits per query, last = no object",
        "pred_masks": "(B, Q, Hp/4, Wp/4) mask logits; Hp, Wp = input size padded up to a multiple of 32",
    },
}
OUTPUTS["instance"] = OUTPUTS["panoptic"]
DEFAULT_OPSET = 18


class DeployableMask2Former(nn.Module):
    """uint8 (B, H, W, 3) BGR frames -> the task's outputs (see ``OUTPUTS``), pre/post-processing in the graph."""

    def __init__(self, model: Mask2Former, meta: ModelMeta, task: str) -> None:
        super().__init__()
        if task not in OUTPUTS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(OUTPUTS)}")
        if meta.num_classes > VOID and task == "semantic":  # ids 0..K-1 and the void label in uint8
            raise ValueError(f"{meta.num_classes} classes do not fit the uint8 label map")
        self.model = model.eval()
        self.task = task
        # BGR in; the model wants meta.input_format
        order = [2, 1, 0] if meta.input_format == "RGB" else [0, 1, 2]
        self.register_buffer("channel_order", torch.tensor(order), persistent=False)
        self.register_buffer("mean", torch.tensor(meta.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(meta.pixel_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        # cast first, then lay out: TensorRT takes uint8 only at graph inputs and outputs (compile.tensorrt_rules)
        x = images.float().permute(0, 3, 1, 2)  # (B, 3, H, W)
        x = x.index_select(1, self.channel_order)
        x = (x - self.mean) * self.inv_std
        out = self.model(x, aux=False)
        logits, masks = out["pred_logits"], out["pred_masks"]  # (B, Q, K+1), (B, Q, Hp/4, Wp/4)
        if self.task != "semantic":
            return logits, masks
        labels = semantic_labels(logits, masks, (images.shape[1], images.shape[2]))  # (B, H, W) uint8
        return labels, semantic_inference(logits, masks)  # and (B, K, Hp/4, Wp/4) scores


def export_onnx(
    model: Mask2Former,
    meta: ModelMeta,
    task: str,
    path: str | Path,
    input_size: tuple[int, int] | None,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export to ``path``; ``input_size=None`` makes height and width dynamic. Returns the path.

    The file is plain ONNX (no metadata yet, not simplified): ``compile.export`` finishes the artifact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = DeployableMask2Former(model, meta, task).eval()
    h, w = input_size or (320, 416)
    example = torch.randint(0, 256, (batch_size, h, w, 3), dtype=torch.uint8)
    dynamic_shapes = None
    if input_size is None:
        height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
        dynamic_shapes = {"images": {1: height, 2: width}}
    logger.info("exporting %s (%s) at %s to %s", task, model.config.backbone.kind, input_size or "dynamic size", path)
    return torch_onnx_export(wrapper, example, path, task, opset, dynamic_shapes=dynamic_shapes)


def torch_onnx_export(
    wrapper: DeployableMask2Former, example: Tensor, path: Path, task: str, opset: int, **options: object
) -> Path:
    """The dynamo exporter with our input/output names. The TorchScript exporter is not used: on this model it
    produced masks 0.47 off with no error."""
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUTS[task]),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
            **options,
        )
    return path
