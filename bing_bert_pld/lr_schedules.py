"""Learning-rate multipliers as pure functions of the optimizer step.

Each returns the factor applied to the optimizer's peak learning rate (the `lr` of
the DeepSpeed JSON's optimizer block). A torch LambdaLR wraps them in engine.py.
"""

from __future__ import annotations

def warmup_exp_decay(step: int, total_steps: int, warmup_proportion: float,
                     decay_rate: float, decay_steps: int, warmup_degree: float = 2.0) -> float:
    """bing_bert's "EE" schedule: polynomial warmup, then decay_rate every decay_steps.

    The PLD paper: peak lr 1e-3, warmup 2%, then x0.99 every 1000 steps.
    """
    warmup_steps = warmup_proportion * total_steps
    if step < warmup_steps:
        return (step / warmup_steps) ** warmup_degree
    return decay_rate ** ((step - warmup_steps) / decay_steps)


def warmup_poly_decay(step: int, total_steps: int, warmup_proportion: float,
                      power: float = 1.0, end_ratio: float = 0.0) -> float:
    """Linear warmup, then (1 - progress)^power down to end_ratio at total_steps."""
    warmup_steps = warmup_proportion * total_steps
    if step < warmup_steps:
        return step / warmup_steps
    remaining = max(total_steps - warmup_steps, 1.0)
    progress = min((step - warmup_steps) / remaining, 1.0)
    return end_ratio + (1.0 - end_ratio) * (1.0 - progress) ** power


# name in the DeepSpeed JSON -> (function, required params, optional params with defaults).
# total_steps is required, not taken from --max_steps: a run stopped and resumed with
# another stopping rule must keep the same schedule.
SCHEDULES = {
    "WarmupExpDecay": (warmup_exp_decay,
                       ("total_steps", "warmup_proportion", "decay_rate", "decay_steps"),
                       {"warmup_degree": 2.0}),
    "WarmupPolyDecay": (warmup_poly_decay, ("total_steps", "warmup_proportion"),
                        {"power": 1.0, "end_ratio": 0.0}),
}

