"""The fastest gated precision by default: CPU features read at run time, gated artifacts offered, the reason shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes.cpu_features import CpuFeatures, cpu_features
from runtimes.vocabulary import INT8_BF16
from sdk.artifact_choice import artifact_for, gated_offers, packaged_artifacts
from sdk.segmenter import Segmenter
from sdk.targets import choose_precision


def features(*flags: str) -> CpuFeatures:
    return CpuFeatures(
        name="test CPU",
        amx_bf16="amx_bf16" in flags,
        amx_int8="amx_int8" in flags,
        avx512_bf16="avx512_bf16" in flags,
        vnni="vnni" in flags,
        avx512=True,
        flags=frozenset(flags),
    )


SAPPHIRE_RAPIDS = features("amx_bf16", "amx_int8", "avx512_bf16", "vnni")
EPYC_ZEN4 = features("avx512_bf16", "vnni")
AVX2_ONLY = features()
ALL = {"fp32": Path("fp32.onnx"), "bf16": Path("fp32.onnx"), "int8": Path("int8.onnx")}
WITH_INT8_BF16 = {**ALL, INT8_BF16: ALL["int8"]}  # the int8 file's float ops gated in bf16 too


@pytest.mark.parametrize(
    ("runtime", "cpu", "offers", "expected"),
    [
        ("openvino", SAPPHIRE_RAPIDS, ALL, "int8"),
        ("openvino", SAPPHIRE_RAPIDS, {"fp32": ALL["fp32"], "bf16": ALL["bf16"]}, "bf16"),
        ("openvino", EPYC_ZEN4, ALL, "bf16"),  # int8 with f32 float ops: slower than bf16 without AMX
        ("openvino", EPYC_ZEN4, WITH_INT8_BF16, "int8"),  # int8, its float ops in bf16: 0.85-0.98x bf16
        ("openvino", features("vnni"), WITH_INT8_BF16, "int8"),
        ("openvino", AVX2_ONLY, WITH_INT8_BF16, "fp32"),
        ("openvino", features("vnni"), ALL, "int8"),
        ("openvino", EPYC_ZEN4, {"fp32": ALL["fp32"], "bf16": ALL["bf16"]}, "bf16"),
        ("openvino", AVX2_ONLY, ALL, "fp32"),  # int8 would saturate-free but slow, bf16 emulated
        ("onnxruntime", EPYC_ZEN4, {"fp32": ALL["fp32"], "int8": ALL["int8"]}, "int8"),  # measured 1.31x fp32
        ("onnxruntime", AVX2_ONLY, {"fp32": ALL["fp32"], "int8": ALL["int8"]}, "fp32"),  # no VNNI: not measured
        ("onnxruntime", AVX2_ONLY, {"int8": ALL["int8"]}, "int8"),
        ("onnxruntime", SAPPHIRE_RAPIDS, {"fp32": ALL["fp32"]}, "fp32"),
    ],
)
def test_choice_follows_the_cpu(runtime, cpu, offers, expected):
    choice = choose_precision(runtime, offers, cpu)
    assert choice.precision == expected
    assert choice.artifact == offers[expected]  # INT8_BF16 offers the int8 file
    assert "test CPU" in choice.reason


def test_reason_names_what_was_passed_over():
    reason = choose_precision("openvino", {"fp32": ALL["fp32"], "int8": ALL["int8"]}, AVX2_ONLY).reason
    assert "int8 needs AMX-INT8 or VNNI" in reason
    assert "no BF16" in reason and "no VNNI" in reason  # the CPU's description
    reason = choose_precision("openvino", {"fp32": ALL["fp32"], "int8": ALL["int8"]}, SAPPHIRE_RAPIDS).reason
    assert "(" not in reason  # int8 won: nothing faster was passed over
    assert "no gated bf16" in choose_precision("openvino", {"fp32": ALL["fp32"]}, EPYC_ZEN4).reason
    reason = choose_precision("openvino", ALL, EPYC_ZEN4).reason  # bf16 won over an int8 file with f32 float ops
    assert "no gated int8 with bf16 float ops artifact" in reason
    reason = choose_precision("openvino", WITH_INT8_BF16, EPYC_ZEN4).reason
    assert "int8 needs" not in reason and "bf16 needs AMX-BF16" in reason


def test_only_offer_without_fp32_runs():
    assert choose_precision("onnxruntime", {"int8": ALL["int8"]}, AVX2_ONLY).precision == "int8"
    with pytest.raises(ValueError, match="no gated artifact"):
        choose_precision("openvino", {}, AVX2_ONLY)


def test_cpu_flags_override(monkeypatch):
    monkeypatch.setenv("M2F_CPU_FLAGS", "avx512f avx512_bf16 avx512_vnni")
    got = cpu_features()
    assert got.avx512_bf16 and got.vnni and not got.amx_bf16
    monkeypatch.setenv("M2F_CPU_FLAGS", "")
    assert not cpu_features().native_bf16


def _meta(target: str, precision: str, gated: bool = True, lowered: dict | None = None) -> dict:
    meta: dict = {"target": target, "precision": precision}
    if gated:
        meta["accuracy"] = {"label_agreement": 1.0}
    if lowered:
        meta["verified_precisions"] = lowered
    return meta


def test_offers_are_gated_and_quantiser_matched():
    """... and an int8 file's bf16 lowering (its float ops in bf16) is not a bf16 offer, even listed first: it is
    offered as INT8_BF16, to the runtime it was quantised for only."""
    artifacts = [
        (Path("nncf_int8.onnx"), _meta("openvino", "int8", lowered={"bf16": {"runtime": "openvino"}})),
        (Path("fp32.onnx"), _meta("openvino", "fp32", lowered={"bf16": {"runtime": "openvino"}})),
        (Path("ort_int8.onnx"), _meta("onnxruntime", "int8")),
        (Path("ungated_fp16.onnx"), _meta("openvino", "fp16", gated=False)),
    ]
    assert gated_offers(artifacts, "openvino") == {
        "fp32": Path("fp32.onnx"),
        "bf16": Path("fp32.onnx"),
        "int8": Path("nncf_int8.onnx"),
        INT8_BF16: Path("nncf_int8.onnx"),
    }
    assert gated_offers(artifacts, "onnxruntime") == {"fp32": Path("fp32.onnx"), "int8": Path("ort_int8.onnx")}
    artifacts[0] = (Path("nncf_int8.onnx"), _meta("openvino", "int8"))  # its float ops gated in f32 only
    assert INT8_BF16 not in gated_offers(artifacts, "openvino")
    assert artifact_for(artifacts, "onnxruntime", "int8") == Path("ort_int8.onnx")
    assert artifact_for(artifacts, "openvino", "bf16") == Path("fp32.onnx")  # lowered by the runtime


@pytest.mark.parametrize("profile", ["cpu", "openvino", "onnxruntime"])
def test_segmenter_runs_the_choice_and_says_why(profile, monkeypatch):
    monkeypatch.delenv("M2F_CPU_FLAGS", raising=False)
    offers = gated_offers(packaged_artifacts(), "onnxruntime" if profile == "onnxruntime" else "openvino")
    with Segmenter(profile) as seg:
        expected = choose_precision(seg.runtime, offers)
        assert seg.precision == expected.precision
        assert seg.model_path == expected.artifact
        text = repr(seg)
        assert f"runtime={seg.runtime!r}" in text and f"precision={seg.precision!r}" in text
        assert cpu_features().name in text  # the reason names the CPU it was chosen on


@pytest.mark.parametrize("profile", ["cpu", "onnxruntime"])
def test_an_unknown_precision_is_an_error_on_every_runtime(profile):
    """ONNX Runtime has no precision option: it used to warn and run the fp32 file for any name."""
    with pytest.raises(ValueError, match="unknown precision 'fp8'; use one of fp32, fp16, bf16, int8"):
        Segmenter(profile, precision="fp8")


def test_explicit_precision_wins(monkeypatch):
    monkeypatch.setenv("M2F_CPU_FLAGS", "avx512f amx_bf16 amx_int8 avx512_bf16 avx512_vnni")
    with Segmenter("onnxruntime", precision="fp32") as seg:
        assert seg.precision == "fp32" and seg.precision_reason == "asked for"


@pytest.mark.parametrize("flags", [None, "avx512f avx512_bf16 avx512_vnni", "avx512f avx512_vnni"])
def test_info_says_what_the_segmenter_runs_and_why(flags, monkeypatch):
    """`m2f info` chooses without loading a backend; its line must match what a Segmenter then runs and says."""
    from sdk.cli import info

    if flags is None:
        monkeypatch.delenv("M2F_CPU_FLAGS", raising=False)
    else:
        monkeypatch.setenv("M2F_CPU_FLAGS", flags)
    shown = info()["targets"]["cpu"]
    with Segmenter("cpu") as seg:
        assert shown == f"{seg.runtime} {seg.precision} ({seg.model_path.name}: {seg.precision_reason})"
