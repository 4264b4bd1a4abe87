"""Keras' Adam in PyTorch.

Keras (the optimizer ST's models were trained with) adds epsilon to sqrt(v), PyTorch to the
bias-corrected sqrt(v_hat). The two agree when PyTorch's eps at step t is eps / sqrt(1 - beta2**t);
with ST's 1e-7 that is 3.2e-6 at step 1, where it decides the size of the step of every weight
whose gradient is below ~1e-5 (train_step README, "Optimizer").
"""

from __future__ import annotations

import math

import torch


class KerasAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose epsilon is Keras' (``keras_eps``, default 1e-7): each step sets
    the group's PyTorch ``eps`` to ``keras_eps / sqrt(1 - beta2**t)``, then runs PyTorch's Adam."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 keras_eps: float = 1e-7, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=keras_eps, weight_decay=weight_decay)

    def add_param_group(self, param_group: dict) -> None:
        param_group.setdefault("keras_eps", self.defaults.get("keras_eps", self.defaults["eps"]))
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            t = 1 + max((int(self.state[p]["step"]) for p in group["params"] if "step" in self.state[p]),
                        default=0)
            group["eps"] = group["keras_eps"] / math.sqrt(1.0 - group["betas"][1] ** t)
        return super().step(closure)
