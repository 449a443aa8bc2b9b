"""Progressive Layer Dropping: the schedule and the gates, as pure functions.

Zhang & He, NeurIPS 2020 (arXiv 2010.13369):
    theta(t) = (1 - theta_bar) * exp(-gamma * t) + theta_bar      (t = optimizer steps done)
    p_i      = 1 - (i / L) * (1 - theta)                           (layer i of L, 1-based)
A kept layer's branches are scaled by 1 / p_i in training; evaluation runs every layer.

Step convention: every forward of the optimizer step taken while the engine's
`global_steps == k` (k steps completed) uses theta(k), so the first step runs at
theta(0) = 1. DeepSpeed <= 0.19.7 updated its PLD state at the end of the previous step
with the count before incrementing it, so that step saw theta(k - 1) (theta(0) for k = 0
and 1). The two differ by (1 - theta_bar) * exp(-gamma (k - 1)) * (1 - exp(-gamma)) for
k >= 1, largest at k = 1: 0.5 * (1 - e^-0.001) = 4.9975e-4 at theta_bar 0.5, gamma 0.001.

Gates are drawn from a generator seeded by (seed, optimizer step, micro-step), so every
data-parallel rank draws the same gates without communicating (no rank waits for a
deeper one), and a resumed run draws what the uninterrupted one would have. No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class PLDConfigError(ValueError):
    """theta_bar or gamma outside their domain."""


@dataclass(frozen=True)
class PLDSchedule:
    theta_bar: float = 0.5  # the keep probability of the last layer, reached asymptotically
    gamma: float = 0.001  # decay rate per optimizer step; the paper suggests ~100 / total_steps

    def __post_init__(self) -> None:
        validate(self.theta_bar, self.gamma)

    def theta(self, step: int) -> float:
        return theta_at(step, self.theta_bar, self.gamma)


def validate(theta_bar: float, gamma: float) -> None:
    if isinstance(theta_bar, bool) or not isinstance(theta_bar, (int, float)) \
            or not 0.0 < theta_bar <= 1.0:
        raise PLDConfigError(f"PLD theta (theta_bar) must be in (0, 1], got {theta_bar!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) \
            or not math.isfinite(gamma) or gamma < 0.0:
        raise PLDConfigError(f"PLD gamma must be a finite number >= 0, got {gamma!r}")


def theta_at(step: int, theta_bar: float, gamma: float) -> float:
    """Keep probability of the deepest layer after `step` completed optimizer steps."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return (1.0 - theta_bar) * math.exp(-gamma * step) + theta_bar


def keep_probabilities(theta: float, num_layers: int) -> tuple[float, ...]:
    """p_i for i = 1..L: lower layers are kept more often; the last with probability theta."""
    return tuple(1.0 - (i / num_layers) * (1.0 - theta) for i in range(1, num_layers + 1))


def expected_active_layers(theta: float, num_layers: int) -> float:
    """sum_i p_i = L - (1 - theta) (L + 1) / 2; 8.75 at theta = 0.5, L = 12."""
    return num_layers - (1.0 - theta) * (num_layers + 1) / 2.0


@dataclass(frozen=True)
class LayerGates:
    """One Bernoulli draw per layer for one micro-batch, with the probabilities used."""

    keep: tuple[bool, ...]
    keep_prob: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.keep) != len(self.keep_prob):
            raise ValueError(f"{len(self.keep)} gates for {len(self.keep_prob)} probabilities")

    @property
    def num_active(self) -> int:
        return sum(self.keep)

    def scale(self, layer_index: int) -> float:
        """The 1/p_i rescaling of layer `layer_index` (0-based)."""
        return 1.0 / self.keep_prob[layer_index]


def gate_generator(seed: int, step: int, micro_step: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, step, micro_step])))


def sample_gates(theta: float, num_layers: int, seed: int, step: int,
                 micro_step: int) -> LayerGates:
    """Gates for micro-batch `micro_step` of optimizer step `step`: a pure function."""
    probs = keep_probabilities(theta, num_layers)
    draws = gate_generator(seed, step, micro_step).random(num_layers)
    # Using the same p_i for the draw and for the rescaling (the old client mixed layers).
    return LayerGates(keep=tuple(bool(u < p) for u, p in zip(draws, probs)), keep_prob=probs)


def full_depth(num_layers: int) -> LayerGates:
    return LayerGates(keep=(True,) * num_layers, keep_prob=(1.0,) * num_layers)
