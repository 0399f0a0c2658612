"""Smooth Domain Adversarial Training (SDAT; Rangwani et al. 2022): sharpness-aware minimisation (SAM;
Foret et al. 2021) of the task loss only.

Each step first moves the model's weights by e = rho * g / ||g||, g the gradient of the source
classification loss (the way up that loss), computes the step's whole loss (classification and
adversarial) there, then moves the weights back and applies that gradient to them. A flat minimum of
the task loss transfers better; the discriminator is not perturbed, since the adversarial game needs
its sharp optimum.
"""

import torch


class SharpnessAware:
    """An optimizer wrapper: `perturb(task_loss)` moves `params` to the ascent point, `step()` moves them
    back, then steps; the training loop sees an optimizer (param_groups, zero_grad, step, state)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params, rho: float):
        self.optimizer, self.params, self.rho = optimizer, list(params), rho
        self.shifts: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def perturb(self, task_loss: torch.Tensor) -> None:
        params = [p for p in self.params if p.requires_grad]
        grads = torch.autograd.grad(task_loss, params, allow_unused=True)
        pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for _, g in pairs]))
        with torch.no_grad():
            self.shifts = [(p, g * (self.rho / (norm + 1e-12))) for p, g in pairs]
            for p, shift in self.shifts:
                p.add_(shift)

    def step(self) -> None:
        with torch.no_grad():
            for p, shift in self.shifts:
                p.sub_(shift)
        self.shifts = []
        self.optimizer.step()
