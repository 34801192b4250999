"""The peers: HF transformers' ``Mask2FormerForUniversalSegmentation`` with the same architecture and weights as ours.

A benchmark model is either a model-zoo name or an HF ``config.json`` (random weights, seeded) or an HF folder
with weights. Either way the HF model is the source and our checkpoint is converted from it with
``state_dict_from_hf``, so both compute the same function.

    hf_dict = hf_config_dict(get_zoo_entry("ade20k-semantic-swin-t").config, class_names)
    model = random_hf_model(hf_dict, seed=0)
    export_hf_onnx(model, (512, 512), "hf.onnx")   # the dynamo exporter, else the legacy one

Everything here imports torch and transformers lazily: ``benchmarks.harness`` imports this module without either.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.litert_peer import PeerNotAvailable
from runtimes.vocabulary import VOID
from train.model.config import Mask2FormerConfig, ResNetConfig, SwinConfig

logger = logging.getLogger(__name__)

HF_STAGES = ["stage1", "stage2", "stage3", "stage4"]
HF_OUTPUTS = ("class_queries_logits", "masks_queries_logits")
HF_INPUT = "pixel_values"


def import_transformers() -> Any:
    """``transformers``, or :class:`PeerNotAvailable` saying what to install."""
    try:
        import transformers
    except ImportError as err:
        raise PeerNotAvailable(f"the HF peers need transformers: pip install 'm2f-edge[dev]' ({err})") from err
    return transformers


def hf_config_dict(config: Mask2FormerConfig, class_names: Sequence[str]) -> dict[str, Any]:
    """Our architecture config -> an HF ``Mask2FormerConfig`` dict (``config_from_hf`` inverts it).

    HF has Swin and ResNet backbones; a timm backbone raises :class:`PeerNotAvailable`.
    """
    bb = config.backbone
    if isinstance(bb, SwinConfig):
        backbone: dict[str, Any] = {
            "model_type": "swin",
            "embed_dim": bb.embed_dim,
            "depths": list(bb.depths),
            "num_heads": list(bb.num_heads),
            "window_size": bb.window_size,
            "mlp_ratio": bb.mlp_ratio,
            "patch_size": bb.patch_size,
            "qkv_bias": bb.qkv_bias,
            "drop_path_rate": bb.drop_path_rate,
            "use_absolute_embeddings": bb.absolute_pos_embed,
            "image_size": bb.pretrain_img_size,
            "out_features": HF_STAGES,
        }
    elif isinstance(bb, ResNetConfig):
        if bb.bottleneck_channels * 4 != bb.out_channels:
            raise PeerNotAvailable("HF ResNets have bottleneck width = output width / 4")
        backbone = {
            "model_type": "resnet",
            "embedding_size": bb.stem_channels,
            "hidden_sizes": [bb.out_channels * 2**i for i in range(len(bb.depths))],
            "depths": list(bb.depths),
            "layer_type": "bottleneck",
            "downsample_in_bottleneck": bb.stride_in_1x1,
            "out_features": HF_STAGES,
        }
    else:
        raise PeerNotAvailable(f"HF transformers has no Mask2Former with a {bb.kind!r} backbone (swin, resnet)")
    pd, dec = config.pixel_decoder, config.decoder
    if pd.num_heads != dec.num_heads:
        raise PeerNotAvailable("HF uses one num_attention_heads for the pixel decoder and the decoder")
    if pd.num_points != 4 or pd.num_groups != 32:
        raise PeerNotAvailable("HF's pixel decoder has 4 sampling points and GroupNorm(32) fixed")
    return {
        "model_type": "mask2former",
        "backbone_config": backbone,
        "feature_size": pd.conv_dim,
        "mask_feature_size": pd.mask_dim,
        "encoder_layers": pd.num_layers,
        "encoder_feedforward_dim": pd.ffn_dim,
        "num_attention_heads": dec.num_heads,
        "hidden_dim": dec.hidden_dim,
        "num_queries": dec.num_queries,
        "decoder_layers": dec.num_layers + 1,
        "dim_feedforward": dec.ffn_dim,
        "dropout": dec.dropout,
        "pre_norm": dec.pre_norm,
        "enforce_input_projection": dec.enforce_input_proj,
        "id2label": {str(i): name for i, name in enumerate(class_names)},
        "label2id": {name: i for i, name in enumerate(class_names)},
    }


def hf_config(config_dict: dict[str, Any]) -> Any:
    """``transformers.Mask2FormerConfig`` from a ``config.json``-style dict."""
    transformers = import_transformers()
    data = dict(config_dict)
    bb = dict(data.pop("backbone_config"))
    kind = bb.pop("model_type")
    bb_cls = {"swin": transformers.SwinConfig, "resnet": transformers.ResNetConfig}.get(kind)
    if bb_cls is None:
        raise PeerNotAvailable(f"HF Mask2Former backbone {kind!r} is not supported here (swin, resnet)")
    bb.setdefault("out_features", HF_STAGES)
    data.pop("model_type", None)
    data["id2label"] = {int(k): v for k, v in data.get("id2label", {}).items()}
    known = set(transformers.Mask2FormerConfig().to_dict())
    return transformers.Mask2FormerConfig(
        backbone_config=bb_cls(**bb), **{k: v for k, v in data.items() if k in known or k == "id2label"}
    )


def random_hf_model(config_dict: dict[str, Any], seed: int = 0) -> Any:
    """HF model in eval mode with seeded random weights.

    HF's own initialisation leaves several tensors at zero (deformable sampling offsets, attention weights,
    query embeddings); every parameter gets seeded noise on top so the model is not degenerate (queries differ,
    masks vary in space), as a trained model would not be.
    """
    import torch

    transformers = import_transformers()
    torch.manual_seed(seed)
    model = transformers.Mask2FormerForUniversalSegmentation(hf_config(config_dict)).eval()
    return perturb_weights(model, seed)


def perturb_weights(model: Any, seed: int) -> Any:
    """Add seeded noise to every parameter and BatchNorm statistic of a model (in place; returns it)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "sampling_offsets" in name or "queries_" in name else 0.05
            p.add_(torch.randn(p.shape, generator=gen) * scale)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model


def load_hf_model(folder: str | Path) -> Any:
    """HF model from a folder written by ``save_pretrained``, in eval mode."""
    transformers = import_transformers()
    return transformers.Mask2FormerForUniversalSegmentation.from_pretrained(str(folder)).eval()


HF_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def hf_runner(model: Any, device: str = "cpu", precision: str = "fp32", to_host: bool = True) -> Any:
    """HF eager on ``device`` ("cpu", "cuda") in ``precision``, as an HF user runs it: weights and input cast to
    the dtype (``torch_dtype``), no autocast. Returns ``run(pixel_values) -> (class_queries_logits,
    masks_queries_logits)`` as float32 tensors: copied to the CPU (``to_host``; the copy waits for the GPU), else
    left on the device for on-device post-processing (the caller synchronises)."""
    import torch

    if precision not in HF_DTYPES:
        raise ValueError(f"the HF peer runs precision {', '.join(HF_DTYPES)}, not {precision!r}")
    dtype = getattr(torch, HF_DTYPES[precision])
    model = model.to(device=device, dtype=dtype).eval()

    def run(pixel_values: Any) -> tuple[Any, Any]:
        with torch.inference_mode():
            out = model(pixel_values=pixel_values.to(device=device, dtype=dtype))
        logits, masks = out.class_queries_logits.float(), out.masks_queries_logits.float()
        return (logits.cpu(), masks.cpu()) if to_host else (logits, masks)

    return run


def hf_processor(pixel_mean: Sequence[float], pixel_std: Sequence[float], folder: str | Path | None = None) -> Any:
    """HF's image processor for frames already letterboxed to the model input: rescale + normalise, no resize.

    From ``folder``'s ``preprocessor_config.json`` when there is one (resize switched off), else built with the
    model's normalisation (RGB, 0-255 scale like ours).
    """
    transformers = import_transformers()
    if folder is not None and (Path(folder) / "preprocessor_config.json").exists():
        return transformers.Mask2FormerImageProcessor.from_pretrained(str(folder), do_resize=False)
    return transformers.Mask2FormerImageProcessor(
        do_resize=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[m / 255 for m in pixel_mean],
        image_std=[s / 255 for s in pixel_std],
        ignore_index=VOID,
    )


def _hf_forward_module(model: Any) -> Any:
    import torch

    class HfLogitsAndMasks(torch.nn.Module):
        """pixel_values -> (class_queries_logits, masks_queries_logits): the two outputs semantic inference needs."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.inner(pixel_values=pixel_values)
            return out.class_queries_logits, out.masks_queries_logits

    return HfLogitsAndMasks(model).eval()


def export_hf_onnx(
    model: Any,
    input_size: tuple[int, int],
    out: str | Path,
    opset: int = 18,
    exporters: Sequence[str] = ("dynamo", "legacy"),
    check_openvino: bool = True,
) -> dict[str, Any]:
    """``torch.onnx.export`` of the HF model as a user would do it: the dynamo exporter, else the legacy one.

    An export counts when OpenVINO's CPU plugin (ONNX Runtime without ``check_openvino`` or without OpenVINO)
    compiles and runs it; its outputs against eager on one random input are recorded, so a wrong export shows up.
    Returns ``{"path", "exporter", "errors": {exporter: message}, "max_abs_diff": {output: float}}``. Raises
    RuntimeError with every exporter's error when none works.
    """
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = _hf_forward_module(model)
    example = torch.randn(1, 3, *input_size, generator=torch.Generator().manual_seed(0))
    errors: dict[str, str] = {}
    for exporter in exporters:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "hf.onnx"
            try:
                with torch.no_grad():
                    torch.onnx.export(
                        module,
                        (example,),
                        str(path),
                        input_names=[HF_INPUT],
                        output_names=list(HF_OUTPUTS),
                        opset_version=opset,
                        dynamo=exporter == "dynamo",
                        external_data=False,
                    )
                diff = _check_onnx(path, module, example, "openvino" if check_openvino else "onnxruntime")
            except Exception as err:  # the peer's export failing is a result, recorded in the row
                message = f"{type(err).__name__}: {' '.join(str(err).split())}"
                logger.warning("HF ONNX export with the %s exporter failed: %s", exporter, message)
                errors[exporter] = message[:500]
                continue
            path.replace(out)
        logger.info("HF ONNX export with the %s exporter: %s (max abs diff %s)", exporter, out, diff)
        return {"path": str(out), "exporter": exporter, "errors": errors, "max_abs_diff": diff}
    raise RuntimeError(
        "HF ONNX export failed with every exporter: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
    )


def _check_onnx(path: Path, module: Any, example: Any, engine: str) -> dict[str, float]:
    """Max abs difference per output of ``engine`` running the export against eager on ``example``."""
    import torch

    with torch.no_grad():
        want = [t.numpy() for t in module(example)]
    feed = {HF_INPUT: example.numpy()}
    try:
        import openvino as ov
    except ImportError:
        engine = "onnxruntime"
    if engine == "openvino":
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled.create_infer_request().infer(feed)
        got = [result[port] for port in compiled.outputs]
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(list(HF_OUTPUTS), feed)
    return {name: float(np.abs(g - w).max()) for name, g, w in zip(HF_OUTPUTS, got, want, strict=True)}
