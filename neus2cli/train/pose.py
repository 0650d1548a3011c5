"""The pose phase of a dynamic frame: the frame's rigid transform, its optimiser and learning-rate schedule.

Owned by the dynamic run; the engine only applies the transform to its rays and leaves the gradients.
"""

from __future__ import annotations

import math

import torch

from neus2cli.train.rigid import FrameToCanonical
from neus2cli.train.trainer import NeuSTrainer


class PoseOptimizer:
    """Adam on a ``FrameToCanonical``, stepped after every engine step (``NeuSTrainer.run(after_step=...)``).

    Args:
        transform: the frame's rays -> canonical frame mapping being learned.
        lr: Adam's rate in the pose-only phase.
        pose_steps: length of that phase; its second half decays the rate to a tenth (cosine), so the
            pose settles instead of ending on Adam's step-size jitter.
        joint_lr_factor: the rate, as a fraction of ``lr``, once the field trains too.
    """

    def __init__(self, transform: FrameToCanonical, lr: float, pose_steps: int, joint_lr_factor: float):
        self.transform = transform
        self.lr, self.pose_steps, self.joint_lr_factor = lr, pose_steps, joint_lr_factor
        self.optimizer = torch.optim.Adam(transform.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
        self.joint = False

    def start_joint_phase(self) -> None:
        """From now on the field trains too: a constant rate of ``joint_lr_factor * lr``."""
        self.joint = True
        self._set_lr(self.lr * self.joint_lr_factor)

    def after_step(self, trainer: NeuSTrainer) -> None:
        if not self.joint and self.pose_steps > 0:
            step = trainer.step - 1  # the step whose gradients these are
            frac = min(1.0, max(0.0, (step / self.pose_steps - 0.5) * 2.0))
            self._set_lr(self.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * frac))))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
