"""The model-zoo configs build the published architectures: parameter counts as in the Mask2Former paper
(Cheng et al., CVPR 2022, Table 1: COCO panoptic, in millions, rounded)."""

from __future__ import annotations

import pytest
import torch

from train.model import Mask2Former
from train.model.zoo import MODEL_ZOO

PAPER_PARAMS_M = {
    "coco-panoptic-r50": 44,
    "coco-panoptic-r101": 63,
    "coco-panoptic-swin-t": 47,
    "coco-panoptic-swin-s": 69,
    "coco-panoptic-swin-b": 107,
    "coco-panoptic-swin-l": 216,
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "millions"), PAPER_PARAMS_M.items())
def test_zoo_parameter_count_matches_paper(name, millions):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = Mask2Former(MODEL_ZOO[name].config)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6) == millions
