"""The export table (``compile.export.EXPORT_FORMATS``) against the runtime registry: a row per artifact target, a
quantiser wherever the registry offers int8, and the refusals that come before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from compile.export import EXPORT_FORMATS, export, export_format
from runtimes.registry import ARTIFACT_TARGETS, export_precisions


def test_one_row_per_artifact_target_of_the_registry() -> None:
    assert sorted(EXPORT_FORMATS) == sorted(ARTIFACT_TARGETS)


@pytest.mark.parametrize("target", ARTIFACT_TARGETS)
def test_a_row_quantises_where_the_registry_offers_int8(target: str) -> None:
    row = export_format(target)
    assert (row.int8 is not None) == ("int8" in export_precisions(target))
    if row.fixed_input_size:  # a static-size target refuses a dynamic export before any work
        assert row.check_request is not None
        with pytest.raises(ValueError, match="input size"):
            row.check_request(export_precisions(target)[0], None)


def test_a_typo_and_a_lowering_the_row_lacks_are_refused_before_any_work(tmp_path: Path) -> None:
    never_read = tmp_path / "never_read.pt"
    with pytest.raises(ValueError, match=r"unknown target 'tensorrtt'; expected one of \['onnxruntime'"):
        export(never_read, "tensorrtt", "fp32", tmp_path / "out.onnx")
    with pytest.raises(ValueError, match="fused MSDA node is an OpenVINO extension"):
        export(never_read, "onnxruntime", "fp32", tmp_path / "out.onnx", input_size=(64, 64), native_ops=True)
