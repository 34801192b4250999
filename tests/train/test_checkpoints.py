"""Checkpoint formats: official detectron2 layout (.pkl / .pth), HF folders and our own .pt."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

from tests.train.hf_models import RESNET, SWIN, hf_config, random_hf_model
from train.model import Mask2Former, ModelMeta, load_pretrained, save_checkpoint
from train.model.convert_hf import config_from_hf

# HF -> official detectron2 names, written independently of train/model/convert_hf.py from the official
# module names (mask2former/modeling/*, detectron2 ResNet): the test's own oracle for the key layout.
_OFFICIAL = [
    (r"^model\.pixel_level_module\.encoder\.embedder\.embedder\.convolution\.", "backbone.stem.conv1."),
    (r"^model\.pixel_level_module\.encoder\.embedder\.embedder\.normalization\.", "backbone.stem.conv1.norm."),
    (
        r"^model\.pixel_level_module\.encoder\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
        lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.shortcut.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
        lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.shortcut.norm.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
        lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
        lambda m: f"backbone.res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.norm.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.swin\.embeddings\.patch_embeddings\.projection\.",
        "backbone.patch_embed.proj.",
    ),
    (r"^model\.pixel_level_module\.encoder\.swin\.embeddings\.norm\.", "backbone.patch_embed.norm."),
    (
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d)\.blocks\.(\d+)\.layernorm_before\.",
        r"backbone.layers.\1.blocks.\2.norm1.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d)\.blocks\.(\d+)\.layernorm_after\.",
        r"backbone.layers.\1.blocks.\2.norm2.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d)\.blocks\.(\d+)\.attention\.o_proj\.",
        r"backbone.layers.\1.blocks.\2.attn.proj.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d)\.blocks\.(\d+)\.attention\.relative_position_bias\.",
        r"backbone.layers.\1.blocks.\2.attn.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d)\.blocks\.(\d+)\.mlp\.",
        r"backbone.layers.\1.blocks.\2.mlp.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.swin\.encoder\.layers\.(\d)\.downsample\.",
        r"backbone.layers.\1.downsample.",
    ),
    (
        r"^model\.pixel_level_module\.encoder\.hidden_states_norms\.stage(\d)\.",
        lambda m: f"backbone.norm{int(m[1]) - 1}.",
    ),
    (r"^model\.pixel_level_module\.decoder\.level_embed$", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (r"^model\.pixel_level_module\.decoder\.input_projections\.", "sem_seg_head.pixel_decoder.input_proj."),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d)\.self_attn\.",
        r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.self_attn.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d)\.self_attn_layer_norm\.",
        r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm1.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d)\.fc(\d)\.",
        r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.linear\2.",
    ),
    (
        r"^model\.pixel_level_module\.decoder\.encoder\.layers\.(\d)\.final_layer_norm\.",
        r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1.norm2.",
    ),
    (r"^model\.pixel_level_module\.decoder\.mask_projection\.", "sem_seg_head.pixel_decoder.mask_features."),
    (r"^model\.pixel_level_module\.decoder\.adapter_1\.0\.", "sem_seg_head.pixel_decoder.adapter_1."),
    (r"^model\.pixel_level_module\.decoder\.adapter_1\.1\.", "sem_seg_head.pixel_decoder.adapter_1.norm."),
    (r"^model\.pixel_level_module\.decoder\.layer_1\.0\.", "sem_seg_head.pixel_decoder.layer_1."),
    (r"^model\.pixel_level_module\.decoder\.layer_1\.1\.", "sem_seg_head.pixel_decoder.layer_1.norm."),
    (r"^model\.transformer_module\.queries_embedder\.", "sem_seg_head.predictor.query_embed."),
    (r"^model\.transformer_module\.queries_features\.", "sem_seg_head.predictor.query_feat."),
    (r"^model\.transformer_module\.level_embed\.", "sem_seg_head.predictor.level_embed."),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d)\.self_attn\.out_proj\.",
        r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.out_proj.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d)\.self_attn_layer_norm\.",
        r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d)\.cross_attn\.",
        r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d)\.cross_attn_layer_norm\.",
        r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.norm.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d)\.fc(\d)\.",
        r"sem_seg_head.predictor.transformer_ffn_layers.\1.linear\2.",
    ),
    (
        r"^model\.transformer_module\.decoder\.layers\.(\d)\.final_layer_norm\.",
        r"sem_seg_head.predictor.transformer_ffn_layers.\1.norm.",
    ),
    (r"^model\.transformer_module\.decoder\.layernorm\.", "sem_seg_head.predictor.decoder_norm."),
    (
        r"^model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.",
        r"sem_seg_head.predictor.mask_embed.layers.\1.",
    ),
    (r"^class_predictor\.", "sem_seg_head.predictor.class_embed."),
    (r"^criterion\.empty_weight$", "criterion.empty_weight"),
]
_FUSED = re.compile(r"^(.*)\.(?:attention|self_attn)\.([qkv])_proj\.(weight|bias)$")


def official_state_dict(hf_state: dict[str, torch.Tensor], swin_index: dict[str, torch.Tensor]) -> dict:
    """An official detectron2-layout Mask2Former state dict holding the HF model's weights."""
    out, fused = {}, {}
    for key, value in hf_state.items():
        if (
            key.endswith("num_batches_tracked")
            or key.endswith("swin.layernorm.weight")
            or key.endswith("swin.layernorm.bias")
        ):
            continue  # FrozenBN has no counter; HF's final Swin norm is unused by the backbone
        m = _FUSED.match(key)
        if m:
            fused.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _OFFICIAL:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise AssertionError(f"test mapping misses {key}")
    for (prefix, kind), qkv in fused.items():
        value = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
        if "pixel_level_module" in prefix:  # Swin block: attn.qkv
            layer, block = re.search(r"layers\.(\d)\.blocks\.(\d+)", prefix).groups()
            out[f"backbone.layers.{layer}.blocks.{block}.attn.qkv.{kind}"] = value
        else:
            layer = re.search(r"layers\.(\d)", prefix)[1]
            out[f"sem_seg_head.predictor.transformer_self_attention_layers.{layer}.self_attn.in_proj_{kind}"] = value
    out.update(swin_index)
    return out


@pytest.fixture(params=[RESNET, SWIN], ids=["resnet", "swin"])
def hf_and_official(request, tmp_path):
    hf = random_hf_model(hf_config(request.param, 4, 6))
    config, names = config_from_hf(hf.config.to_dict())
    index = {f"backbone.{k}": v for k, v in Mask2Former(config).backbone.state_dict().items() if "position_index" in k}
    official = official_state_dict(hf.state_dict(), index)
    hf.save_pretrained(tmp_path / "hf")
    meta = ModelMeta(class_names=tuple(names), thing_ids=(0, 1))
    return hf, official, config, meta


def test_official_pkl_and_pth_load_like_the_hf_copy(hf_and_official, tmp_path):
    hf, official, config, meta = hf_and_official
    pkl = tmp_path / "model_final_test.pkl"
    with pkl.open("wb") as f:  # the model-zoo format: numpy arrays under "model"
        pickle.dump({"model": {k: v.numpy() for k, v in official.items()}, "__author__": "test"}, f)
    pth = tmp_path / "model_final.pth"  # detectron2 training output
    torch.save({"model": official, "iteration": 10}, pth)
    from_hf = load_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        want = from_hf.model(x)
        for path in (pkl, pth):
            loaded = load_pretrained(path, config=config, meta=meta)
            assert loaded.source == "detectron2"
            got = loaded.model(x)
            torch.testing.assert_close(got["pred_logits"], want["pred_logits"], atol=1e-5, rtol=0)
            torch.testing.assert_close(got["pred_masks"], want["pred_masks"], atol=1e-5, rtol=0)
        torch.testing.assert_close(want["pred_masks"], hf(pixel_values=x).masks_queries_logits, atol=1e-4, rtol=0)


def test_own_format_round_trip(hf_and_official, tmp_path):
    _hf, _, _, _ = hf_and_official
    loaded = load_pretrained(tmp_path / "hf")
    path = save_checkpoint(tmp_path / "ours.pt", loaded.model, loaded.meta, extra={"iteration": 3})
    again = load_pretrained(path)
    assert again.source == "m2f"
    assert again.config == loaded.config and again.meta == loaded.meta
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x)["pred_masks"], loaded.model(x)["pred_masks"], atol=0, rtol=0)


def test_detectron2_checkpoint_without_config_says_what_to_pass(hf_and_official, tmp_path):
    _, official, _, _ = hf_and_official
    torch.save({"model": official}, tmp_path / "model_final.pth")
    with pytest.raises(ValueError, match="model zoo name"):
        load_pretrained(tmp_path / "model_final.pth")


def test_wrong_config_reports_mismatched_weights(hf_and_official, tmp_path):
    _, official, config, meta = hf_and_official
    torch.save({"model": official}, tmp_path / "model_final.pth")
    smaller = type(config)(
        num_classes=config.num_classes + 1,
        backbone=config.backbone,
        pixel_decoder=config.pixel_decoder,
        decoder=config.decoder,
    )
    meta = ModelMeta(class_names=(*meta.class_names, "extra"))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_pretrained(tmp_path / "model_final.pth", config=smaller, meta=meta)


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_pretrained(tmp_path / "corrupt.pt")
    torch.save({"format": "m2f-checkpoint", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 99"):
        load_pretrained(tmp_path / "future.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"config\.json"):
        load_pretrained(tmp_path / "folder")


def test_foreign_torch_files_are_named_briefly_with_what_is_accepted(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.pt")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other_state.pt")
    torch.save([1, 2], tmp_path / "a_list.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage")
    cases = {
        "whole_model.pt": r"not an m2f checkpoint: it holds pickled Python objects \(e\.g\. torch\.nn\.modules\.linear",
        "other_state.pt": r"not an m2f checkpoint: its 1 keys \(e\.g\. encoder\.weight\) are neither",
        "a_list.pt": r"not an m2f checkpoint: it holds list",
        "garbage.pt": r"not a readable torch checkpoint",
    }
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match) as caught:
            load_pretrained(tmp_path / name)
        message = str(caught.value)
        assert "m2f reads its own .pt" in message and "detectron2" in message
        assert "weights_only" not in message and len(message) < 500, message


def test_read_checkpoint_is_the_one_typed_reader(tmp_path):
    """What compile, eval, benchmark and resume need, typed; foreign files and other versions are refused."""
    from tests.tiny_models import tiny_architecture
    from train.data.synthetic import synthetic_meta
    from train.model import Mask2FormerConfig
    from train.model.checkpoint import CHECKPOINT_VERSION, read_checkpoint, read_checkpoint_if_ours

    meta = synthetic_meta()
    model = Mask2Former(Mask2FormerConfig.from_dict({"num_classes": meta.num_classes, **tiny_architecture()}))
    run = {"task": "semantic", "val_data": {"format": "camvid", "split": "val"}, "eval_resize": {"min_size": 360}}
    path = save_checkpoint(tmp_path / "ours.pt", model, meta,
                           extra={"train_config": run, "iteration": 7, "optimizer": {"state": {}}})  # fmt: skip
    record = read_checkpoint(path)
    assert (record.task, record.val_data["split"], record.eval_min_size, record.iteration) == (
        "semantic",
        "val",
        360,
        7,
    )
    assert record.training_state == {"optimizer": {"state": {}}}
    assert list(record.meta["class_names"]) == list(meta.class_names)
    assert set(record.state_dict) == set(model.state_dict())
    official = tmp_path / "model_final.pth"
    torch.save({"model": dict(model.state_dict()), "iteration": 10}, official)  # detectron2's layout, not ours
    assert read_checkpoint_if_ours(official) is None
    with pytest.raises(ValueError, match="not an m2f checkpoint"):
        read_checkpoint(official)
    torch.save({**torch.load(path, weights_only=True), "version": CHECKPOINT_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=f"version {CHECKPOINT_VERSION + 1}"):
        read_checkpoint(tmp_path / "future.pt")
