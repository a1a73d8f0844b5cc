"""Cost model: USD per request from token counts and a tier's prices, and a daily projection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TierPrice:
    """What one tier charges: per million input/output tokens and/or per request."""

    usd_per_million_input_tokens: float = 0.0
    usd_per_million_output_tokens: float = 0.0
    usd_per_request: float = 0.0


def request_cost_usd(
    price: TierPrice, input_tokens: np.ndarray, output_tokens: np.ndarray
) -> np.ndarray:
    """USD of each request at this tier: (n,) token counts in, (n,) USD out."""
    input_tokens = np.asarray(input_tokens, dtype=float)
    output_tokens = np.asarray(output_tokens, dtype=float)
    return (
        input_tokens * price.usd_per_million_input_tokens / 1e6
        + output_tokens * price.usd_per_million_output_tokens / 1e6
        + price.usd_per_request
    )


@dataclass(frozen=True)
class DailyProjection:
    tokens_per_day: float  # teacher input tokens a day if the teacher took all traffic
    requests_per_day: float
    teacher_only_usd_per_day: float
    cascade_usd_per_day: float
    savings_usd_per_day: float


def project_daily(
    tokens_per_day: float,
    mean_teacher_input_tokens: float,
    teacher_only_usd_per_request: float,
    cascade_usd_per_request: float,
) -> DailyProjection:
    """Scale the measured per-request costs to a traffic volume stated in teacher tokens."""
    if mean_teacher_input_tokens <= 0:
        raise ValueError("mean_teacher_input_tokens must be positive")
    requests = tokens_per_day / mean_teacher_input_tokens
    teacher_only = requests * teacher_only_usd_per_request
    cascade = requests * cascade_usd_per_request
    return DailyProjection(
        tokens_per_day=tokens_per_day,
        requests_per_day=requests,
        teacher_only_usd_per_day=teacher_only,
        cascade_usd_per_day=cascade,
        savings_usd_per_day=teacher_only - cascade,
    )


@dataclass(frozen=True)
class BreakEven:
    """When the one-off cost of building the cascade (labelling + training) is paid back."""

    one_off_usd: float
    labelling_usd: float
    training_usd: float
    savings_usd_per_request: float
    requests: float | None  # None: the cascade saves nothing per request, never pays back
    teacher_tokens: float | None  # the same volume in teacher input tokens
    days: float | None  # at the stated tokens per day, when one is given


def break_even(
    labelling_usd: float,
    training_usd: float,
    teacher_only_usd_per_request: float,
    cascade_usd_per_request: float,
    mean_teacher_input_tokens: float,
    tokens_per_day: float | None = None,
) -> BreakEven:
    """The traffic after which the cascade's saving has paid for its labels and training."""
    saving = teacher_only_usd_per_request - cascade_usd_per_request
    one_off = labelling_usd + training_usd
    requests = tokens = days = None
    if saving > 0:
        requests = one_off / saving
        tokens = requests * mean_teacher_input_tokens
        if tokens_per_day:
            days = tokens / tokens_per_day
    return BreakEven(
        one_off_usd=one_off,
        labelling_usd=labelling_usd,
        training_usd=training_usd,
        savings_usd_per_request=saving,
        requests=requests,
        teacher_tokens=tokens,
        days=days,
    )
