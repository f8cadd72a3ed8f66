"""Importance criteria: callables from a torch-pruning group to one score per channel (higher = keep).

Magnitude, BN-scale and random are torch-pruning's own classes; `activation` and `taylor` need data and are
prepared on the model being pruned (`prepare(model, batches)`) before they score groups. All share torch-pruning's
group reduction, so every criterion plugs into the same pruner.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ..registry import CRITERIA

# Each criterion registered once by name (edgeprune.registry); the CLI and the config validate against it.
CRITERIA.register("l1")(lambda: _tp().importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=None))
CRITERIA.register("l2")(lambda: _tp().importance.MagnitudeImportance(p=2, group_reduction="mean", normalizer=None))
CRITERIA.register("bn-scale")(lambda: _tp().importance.BNScaleImportance(group_reduction="mean", normalizer=None))
CRITERIA.register("activation")(lambda: _activation_class()())
CRITERIA.register("taylor")(lambda: _taylor_class()())
CRITERIA.register("random")(lambda: _tp().importance.RandomImportance())


def make_importance(name: str) -> Callable:
    return CRITERIA.get(name)()


def _tp():
    import torch_pruning as tp

    return tp


def _activation_class():
    import torch_pruning as tp
    from torch_pruning.pruner import function

    class ActivationImportance(tp.importance.GroupMagnitudeImportance):
        """Activation-based attention (Zhao, Jain, Zhao, "Adaptive Activation-based Structured Pruning"): a
        filter's score is the mean of its attention map, mean over images and positions of relu(a)^p, where a is
        the output of the BatchNorm after the filter (its convolution's output where there is no BN).
        Coupled layers of a group are averaged, as torch-pruning reduces magnitudes."""

        def __init__(self, p: int = 1):
            super().__init__(p=p, group_reduction="mean", normalizer=None)
            self.stats: dict[nn.Module, torch.Tensor] = {}

        @torch.no_grad()
        def prepare(self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
            sums: dict[nn.Module, torch.Tensor] = {}
            counts: dict[nn.Module, int] = {}

            def hook(mod, _inp, out):
                a = out.relu() if isinstance(mod, nn.modules.batchnorm._BatchNorm) else out.abs()
                dims = [d for d in range(a.dim()) if d != 1] if a.dim() > 2 else [0]
                sums[mod] = sums.get(mod, 0) + a.pow(self.p).sum(dim=dims)
                counts[mod] = counts.get(mod, 0) + a.numel() // a.shape[1]

            kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.conv._ConvNd, nn.Linear)
            hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
            was_training = model.training
            model.eval()
            try:
                for x, _ in batches:
                    model(x)
            finally:
                for h in hooks:
                    h.remove()
                model.train(was_training)
            self.stats = {m: sums[m] / counts[m] for m in sums}

        @torch.no_grad()
        def __call__(self, group):
            bn_imp, bn_idx, conv_imp, conv_idx = [], [], [], []
            for i, (dep, idxs) in enumerate(group):
                layer, fn = dep.target.module, dep.handler
                if layer not in self.stats:
                    continue
                if fn == function.prune_batchnorm_out_channels:
                    bn_imp.append(self.stats[layer][torch.as_tensor(idxs, dtype=torch.long)])
                    bn_idx.append(group[i].root_idxs)
                elif fn in (function.prune_conv_out_channels, function.prune_linear_out_channels):
                    conv_imp.append(self.stats[layer][torch.as_tensor(idxs, dtype=torch.long)])
                    conv_idx.append(group[i].root_idxs)
            imp, idx = (bn_imp, bn_idx) if bn_imp else (conv_imp, conv_idx)
            if not imp:
                return None
            return self._reduce(imp, idx)

    return ActivationImportance


def _taylor_class():
    import torch_pruning as tp

    class TaylorImportance(tp.importance.GroupTaylorImportance):
        """First-order Taylor expansion of the loss (Molchanov et al. 2019), gradients from labeled batches."""

        def __init__(self):
            super().__init__(group_reduction="mean", normalizer=None)

        def prepare(self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
            was_training = model.training
            model.eval()
            model.zero_grad(set_to_none=True)
            loss_fn = nn.CrossEntropyLoss()
            with torch.enable_grad():
                for x, y in batches:
                    loss_fn(model(x), y).backward()
            model.train(was_training)

    return TaylorImportance
