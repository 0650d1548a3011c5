"""Exponential moving average of a module's weights (what runs render and mesh)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightEMA:
    """``shadow = decay * shadow + (1 - decay) * weights`` after every optimiser step.

    ``decay <= 0`` disables averaging: the module's own weights are then the average.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = module
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        if self.decay <= 0:
            return
        params = dict(self.module.named_parameters())
        # A frozen parameter's average is itself: decay * x + (1 - decay) * x is not x in floating point,
        # and a frozen value must stay bit for bit (the dynamic run freezes the sharpness).
        names = [n for n in self.shadow if params[n].requires_grad]
        shadow = [self.shadow[n] for n in names]
        current = [params[n].detach() for n in names]
        torch._foreach_mul_(shadow, self.decay)
        torch._foreach_add_(shadow, current, alpha=1.0 - self.decay)

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average at the module's current weights."""
        for n, p in self.module.named_parameters():
            self.shadow[n].copy_(p)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module`` (same parameter names) for good."""
        if self.decay <= 0:
            return
        for n, p in module.named_parameters():
            p.copy_(self.shadow[n])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the module."""
        if self.decay <= 0:
            yield
            return
        params = dict(self.module.named_parameters())
        backup = {n: p.detach().clone() for n, p in params.items()}
        self.copy_to(self.module)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for n, t in state["shadow"].items():
            if n in self.shadow:
                self.shadow[n].copy_(t)
