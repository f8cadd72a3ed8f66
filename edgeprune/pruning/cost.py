"""Model cost: MACs and parameters (torch-pruning's counter), and bytes of weights."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelCost:
    macs: int
    params: int
    param_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@torch.no_grad()
def model_cost(model: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point())
    return ModelCost(int(macs), int(params), int(nbytes))
