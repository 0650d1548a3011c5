"""Step schedules of one optimisation: progressive hash-grid levels and the learning-rate decay."""

from __future__ import annotations


def active_levels(step: int, n_levels: int, start_levels: int, start_step: int, every: int) -> int:
    """Progressive training: ``start_levels`` until ``start_step``, then one more level every ``every`` steps."""
    if every <= 0:
        return n_levels
    extra = max(0, step - start_step) // every
    return int(min(n_levels, start_levels + extra))


def lr_factor(step: int, total: int, decay_start: float, final_factor: float) -> float:
    """1 until ``decay_start * total``, then exponential decay reaching ``final_factor`` at ``total``."""
    begin = decay_start * total
    if total <= 0 or step <= begin or final_factor >= 1.0:
        return 1.0
    frac = min(1.0, (step - begin) / max(total - begin, 1.0))
    return float(final_factor**frac)
