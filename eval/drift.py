"""Production drift audit: an alarm on the student's departure rate that may be read after
every observation, with no multiple-testing penalty.

In production a share of the requests the student answered is also sent to the teacher in
the background. Each audited request gives X_t = 1 when the student's answer departs from
the teacher's, else 0, and the audit watches p = E[X], the departure rate among
student-answered requests, against a `limit`. Calibration bounds the risk
R = accept_rate · p <= α, so the natural limit is α / accept_rate.

    audit = DriftAudit(limit=alpha / accept_rate, delta=0.05)
    for departed in audited_requests:          # bool per audited request
        audit.update(departed)
        if audit.alarm:                        # confident that p > limit
            threshold = raised_threshold(threshold, recent_accepted_scores)
            audit.reset()                      # a new threshold is a new stream

Method: testing by betting (Waudby-Smith & Ramdas, "Estimating means of bounded random
variables by betting", JRSS-B 86(1), 2024, arXiv:2010.09686; WSR below). For a candidate
rate m, a gambler who starts with capital 1 and stakes λ_i, chosen from X_1..X_{i-1} only,
on "X_i exceeds m" holds

    K⁺_t(m) = Π_{i<=t} (1 + λ_i(m) (X_i − m)),    λ_i(m) = min(λ_i, c / m),  c = 1/2.

Under H0: p <= m each factor has mean <= 1, so K⁺(m) is a non-negative supermartingale and
Ville's inequality gives P(exists t: K⁺_t(m) >= 1/δ) <= δ. K⁺_t(m) is non-increasing in m,
so the m it rejects form an interval [0, L_t]: L_t is a lower confidence sequence,
P(exists t: L_t > p) <= δ. The alarm is the test at m = limit: it trips at the first t >=
`min_samples` with K⁺_t(limit) >= 1/δ, i.e. when the lower bound reaches the limit, and an
alarm raised while p <= limit happens with probability <= δ over the whole stream, however
often it is read. The bets are WSR's aGRAPA at the limit: the growth-rate optimal bet
against p <= limit with plug-in moments, kept in [0, c / limit] so that no observation
can cost more than half of the capital:

    λ_t = clip((μ̂_{t-1} − limit) / (σ̂²_{t-1} + (μ̂_{t-1} − limit)²), 0, c / limit)

The upper bound mirrors it: K⁻_t(m) = Π (1 + λ⁻_i (m − X_i)) tests H0: p >= m, is
non-decreasing in m, and U_t = inf{m: K⁻_t(m) >= 1/δ} gives P(exists t: U_t < p) <= δ.
Its bets are WSR's predictable plug-in (PrPl), one-sided, tuned for a narrow bound at every
rate rather than for one limit:

    λ⁻_t = min(c, sqrt(2 log(1/δ) / (σ̂²_{t-1} · t · log(1 + t))))

Both use WSR's regularised plug-ins μ̂_t = (1/2 + Σ_{i<=t} X_i) / (t + 1) and
σ̂²_t = (1/4 + Σ_{i<=t} (X_i − μ̂_i)²) / (t + 1). Each bound is one-sided at level δ, so
[lower_bound, upper_bound] holds p at all times with probability >= 1 − 2δ.

The bounds are read off a grid of candidate rates (0.001 apart, plus the limit itself),
rounded outward, so they stay valid; the grid's capital is brought up to date lazily, so
`update` costs O(1) and reading a bound O(grid) per observation since the last read.

Pure numpy: booleans in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BET_CAP = 0.5  # c: one observation never risks more than half of the capital
GRID = np.linspace(0.0, 1.0, 1001)  # candidate rates the bounds are read from
_FLUSH_ROWS = 1024  # pending observations folded into the grid at a time


@dataclass(frozen=True)
class AuditPath:
    """The audit's state after each observation of a stream (see `audit_path`)."""

    rate: np.ndarray  # (n,) empirical departure rate after t observations
    lower_bound: np.ndarray  # (n,) anytime-valid lower bound on p
    upper_bound: np.ndarray  # (n,) anytime-valid upper bound on p
    log_capital: np.ndarray  # (n,) log K⁺_t(limit): the alarm trips at log(1/δ)
    alarm: np.ndarray  # (n,) bool: the (latched) alarm after t observations
    alarm_at: int | None  # the observation count at which the alarm tripped, if it did


class DriftAudit:
    """Anytime-valid audit of the departure rate p among student-answered requests.

    `alarm` turns True at the first observation t >= `min_samples` at which the lower
    confidence bound reaches `limit` (the betting test of H0: p <= limit rejects, K⁺_t >=
    1/δ) and the empirical rate is at or above the limit; it stays True until `reset()`.
    If p <= limit throughout, P(the alarm ever trips) <= δ. The empirical-rate condition
    only removes alarms, so validity stands; it keeps the alarm in line with `lower_bound`,
    which is reported as min(L_t, rate).

    `upper_bound` (reported as max(U_t, rate)) is for dashboards: P(U_t < p at some t) <= δ.
    There is no forgetting: after the threshold changes, p changes, so call `reset()`; the
    guarantee then holds afresh for each stream between resets.
    """

    def __init__(self, limit: float, delta: float = 0.05, min_samples: int = 20) -> None:
        if not 0 < limit < 1:
            raise ValueError(f"limit must be in (0, 1), got {limit}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 0:
            raise ValueError(f"min_samples must be an int >= 0, got {min_samples!r}")
        self.limit = float(limit)
        self.delta = float(delta)
        self.min_samples = min_samples
        self._log_threshold = math.log(1.0 / self.delta)
        self._grid = np.union1d(GRID, [self.limit])  # (G,) ascending, holds the limit
        with np.errstate(divide="ignore"):
            self._cap_over_m = BET_CAP / self._grid  # (G,) c / m, inf at m = 0
        self.reset()

    def reset(self) -> None:
        """Forget every observation (after a threshold change: a new stream, a new test)."""
        self._n = 0
        self._n_departed = 0
        self._sq_resid = 0.0  # Σ (X_i − μ̂_i)², for σ̂²
        self._log_capital = 0.0  # log K⁺_t(limit)
        self._alarm_at: int | None = None
        # observations not yet folded into the grid, with their bets
        self._pending_x: list[float] = []
        self._pending_lower: list[float] = []
        self._pending_upper: list[float] = []
        self._log_k_lower = np.zeros_like(self._grid)  # (G,) log K⁺_t(m)
        self._log_k_upper = np.zeros_like(self._grid)  # (G,) log K⁻_t(m)

    # --- observations ---------------------------------------------------------------

    def update(self, departed: bool) -> None:
        """Add one audited request: True when the student's answer departed from the teacher's."""
        if departed not in (0, 1):  # True/False, 0/1, numpy bools
            raise ValueError(f"departed must be True/False (or 1/0), got {departed!r}")
        x = 1.0 if departed else 0.0
        n, limit = self._n, self.limit
        mean_prev = (0.5 + self._n_departed) / (n + 1)  # μ̂_{t-1}
        var_prev = (0.25 + self._sq_resid) / (n + 1)  # σ̂²_{t-1}
        gap = mean_prev - limit
        bet_lower = min(max(gap / (var_prev + gap * gap), 0.0), BET_CAP / limit)
        t = n + 1
        bet_upper = min(
            BET_CAP, math.sqrt(2 * self._log_threshold / (var_prev * t * math.log1p(t)))
        )
        self._log_capital += math.log1p(bet_lower * (x - limit))
        self._n, self._n_departed = t, self._n_departed + int(x)
        self._sq_resid += (x - (0.5 + self._n_departed) / (t + 1)) ** 2
        if self._alarm_at is None and self._trips(t, self._n_departed, self._log_capital):
            self._alarm_at = t
        self._queue([x], [bet_lower], [bet_upper])

    def update_many(self, departed: np.ndarray) -> None:
        """Add audited requests in order: the same as calling `update` on each, the alarm
        being checked after every one of them."""
        x = _check_departed(departed)
        if len(x) == 0:
            return
        t, bet_lower, bet_upper = self._bets(x)
        self._advance(x, t, bet_lower)
        self._queue(x.tolist(), bet_lower.tolist(), bet_upper.tolist())

    def _bets(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B,) each new observation's index t and its bets λ⁺_t, λ⁻_t, which use only the
        observations before it. Advances the running Σ (X_i − μ̂_i)²."""
        t = self._n + np.arange(1, len(x) + 1)
        mean = (0.5 + self._n_departed + np.cumsum(x)) / (t + 1)  # μ̂_t
        sq_resid = self._sq_resid + np.cumsum((x - mean) ** 2)
        var = (0.25 + sq_resid) / (t + 1)  # σ̂²_t
        mean_prev = np.r_[(0.5 + self._n_departed) / (self._n + 1), mean[:-1]]
        var_prev = np.r_[(0.25 + self._sq_resid) / (self._n + 1), var[:-1]]
        self._sq_resid = float(sq_resid[-1])
        gap = mean_prev - self.limit
        bet_lower = np.clip(gap / (var_prev + gap * gap), 0.0, BET_CAP / self.limit)
        bet_upper = np.minimum(
            BET_CAP, np.sqrt(2 * self._log_threshold / (var_prev * t * np.log1p(t)))
        )
        return t, bet_lower, bet_upper

    def _advance(
        self, x: np.ndarray, t: np.ndarray, bet_lower: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Move the counts and K⁺(limit) over the new observations, checking the alarm
        after each; returns (B,) departures so far and log K⁺_t(limit)."""
        n_departed = self._n_departed + np.cumsum(x)
        log_capital = self._log_capital + np.cumsum(np.log1p(bet_lower * (x - self.limit)))
        if self._alarm_at is None:
            trips = self._trips(t, n_departed, log_capital)
            if trips.any():
                self._alarm_at = int(t[np.argmax(trips)])
        self._n, self._n_departed = int(t[-1]), int(n_departed[-1])
        self._log_capital = float(log_capital[-1])
        return n_departed, log_capital

    def _trips(self, n, n_departed, log_capital):
        """The alarm condition after n observations (scalars or arrays)."""
        return (
            (n >= self.min_samples)
            & (log_capital >= self._log_threshold)
            & (n_departed >= self.limit * n)
        )

    # --- the grid of candidate rates ---------------------------------------------------

    def _queue(self, x: list, bet_lower: list, bet_upper: list) -> None:
        self._pending_x += x
        self._pending_lower += bet_lower
        self._pending_upper += bet_upper
        if len(self._pending_x) >= 16 * _FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Fold the pending observations into the grid's log capital."""
        if not self._pending_x:
            return
        x, bet_lower, bet_upper = (
            np.asarray(part) for part in (self._pending_x, self._pending_lower, self._pending_upper)
        )
        self._pending_x, self._pending_lower, self._pending_upper = [], [], []
        for start in range(0, len(x), _FLUSH_ROWS):
            rows = slice(start, start + _FLUSH_ROWS)
            lower, upper = self._increments(x[rows], bet_lower[rows], bet_upper[rows])
            self._log_k_lower += lower.sum(axis=0)
            self._log_k_upper += upper.sum(axis=0)

    def _increments(
        self, x: np.ndarray, bet_lower: np.ndarray, bet_upper: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, G) log-capital increments at every grid rate m, for K⁺ and K⁻.

        Each is written to be exactly monotone in m in floating point too: K⁺ gains
        log(1 + min(λ, c/m)(1 − m)) on a departure and log(1 − min(λm, c)) otherwise."""
        m = self._grid  # (G,)
        departed = x == 1.0  # (B,)
        lower = np.zeros((len(x), len(m)))
        upper = np.empty((len(x), len(m)))
        lam, lam_up = bet_lower[:, None], bet_upper[:, None]  # (B, 1)
        lower[departed] = np.log1p(np.minimum(lam[departed], self._cap_over_m) * (1.0 - m))
        betting = ~departed & (bet_lower > 0)  # a zero bet leaves the capital as it is
        lower[betting] = np.log1p(-np.minimum(lam[betting] * m, BET_CAP))
        upper[departed] = np.log1p(-lam_up[departed] * (1.0 - m))
        upper[~departed] = np.log1p(lam_up[~departed] * m)
        return lower, upper

    def _bounds(self, log_k_lower: np.ndarray, log_k_upper: np.ndarray):
        """Grid bounds from log capital (..., G): L rounded down, U rounded up."""
        grid, threshold = self._grid, self._log_threshold
        # K⁺ falls with m: the rejected rates are a prefix; L is its last grid point
        first_kept = np.argmin(log_k_lower >= threshold, axis=-1)
        lower = np.where(first_kept > 0, grid[np.maximum(first_kept - 1, 0)], 0.0)
        # K⁻ rises with m: the rejected rates are a suffix; U is its first grid point
        last_kept = len(grid) - 1 - np.argmin(log_k_upper[..., ::-1] >= threshold, axis=-1)
        upper = np.where(
            last_kept < len(grid) - 1, grid[np.minimum(last_kept + 1, len(grid) - 1)], 1.0
        )
        return lower, upper

    # --- what the audit says -----------------------------------------------------------

    @property
    def n(self) -> int:
        """Audited requests seen since the last reset."""
        return self._n

    @property
    def rate(self) -> float:
        """Empirical departure rate (nan before the first observation)."""
        return self._n_departed / self._n if self._n else float("nan")

    @property
    def lower_bound(self) -> float:
        """Anytime-valid lower bound on p: P(lower_bound > p at some t) <= δ."""
        if self._n == 0:
            return 0.0
        self._flush()
        lower, _ = self._bounds(self._log_k_lower, self._log_k_upper)
        return min(float(lower), self.rate)

    @property
    def upper_bound(self) -> float:
        """Anytime-valid upper bound on p: P(upper_bound < p at some t) <= δ."""
        if self._n == 0:
            return 1.0
        self._flush()
        _, upper = self._bounds(self._log_k_lower, self._log_k_upper)
        return max(float(upper), self.rate)

    @property
    def log_capital(self) -> float:
        """log K⁺_t(limit), the evidence that p > limit; the alarm needs log(1/δ)."""
        return self._log_capital

    @property
    def alarm(self) -> bool:
        """True once the lower bound has reached the limit (after `min_samples`)."""
        return self._alarm_at is not None

    @property
    def alarm_at(self) -> int | None:
        """The observation count at which the alarm tripped, or None."""
        return self._alarm_at


def audit_path(
    departed: np.ndarray, limit: float, delta: float = 0.05, min_samples: int = 20
) -> AuditPath:
    """Replay a stream through a fresh `DriftAudit` and return its state after every
    observation (for backtests and dashboards); the numbers are those the audit shows."""
    x = _check_departed(departed)
    audit = DriftAudit(limit, delta, min_samples)
    rate, lower, upper, log_capital = (np.empty(len(x)) for _ in range(4))
    for start in range(0, len(x), _FLUSH_ROWS):
        rows = slice(start, start + _FLUSH_ROWS)
        chunk = x[rows]
        t, bet_lower, bet_upper = audit._bets(chunk)
        n_departed, log_capital[rows] = audit._advance(chunk, t, bet_lower)
        inc_lower, inc_upper = audit._increments(chunk, bet_lower, bet_upper)
        k_lower = _running_sum(inc_lower, audit._log_k_lower)  # (B, G)
        k_upper = _running_sum(inc_upper, audit._log_k_upper)
        audit._log_k_lower, audit._log_k_upper = k_lower[-1].copy(), k_upper[-1].copy()
        grid_lower, grid_upper = audit._bounds(k_lower, k_upper)
        rate[rows] = n_departed / t
        lower[rows] = np.minimum(grid_lower, rate[rows])
        upper[rows] = np.maximum(grid_upper, rate[rows])
    tripped = audit.alarm_at if audit.alarm_at is not None else len(x) + 1
    alarm = np.arange(1, len(x) + 1) >= tripped
    return AuditPath(rate, lower, upper, log_capital, alarm, audit.alarm_at)


def raised_threshold(current: float, scores_seen: np.ndarray, step_quantile: float = 0.2) -> float:
    """A stricter threshold after an alarm: the `step_quantile` quantile of the recently
    accepted scores (those >= `current`), so roughly that share of what the student
    answered now defers. Never below `current`; `current` when no seen score was accepted.
    With heavy ties at `current` the quantile can equal it; then the smallest accepted
    score above `current` is used, so the threshold still moves whenever it can."""
    if math.isnan(current):
        raise ValueError("current threshold must not be nan")
    if not 0 < step_quantile < 1:
        raise ValueError(f"step_quantile must be in (0, 1), got {step_quantile}")
    scores = np.asarray(scores_seen, dtype=float).ravel()
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores_seen must be finite")
    accepted = scores[scores >= current]
    if len(accepted) == 0:
        return float(current)
    raised = float(np.quantile(accepted, step_quantile))
    if raised <= current:
        above = accepted[accepted > current]
        return float(above.min()) if len(above) else float(current)
    return raised


def _running_sum(rows: np.ndarray, start: np.ndarray) -> np.ndarray:
    """start + cumulative sum down the rows of (B, G), in place (row by row: numpy's cumsum
    along axis 0 is several times slower)."""
    rows[0] += start
    for i in range(1, len(rows)):
        rows[i] += rows[i - 1]
    return rows


def _check_departed(departed) -> np.ndarray:
    """(n,) float 0/1 from bools or 0/1 numbers; anything else is refused."""
    x = np.asarray(departed)
    if x.ndim != 1:
        raise ValueError(f"departed must be a 1-D array of bools, got shape {x.shape}")
    x = x.astype(float)
    if not np.all((x == 0.0) | (x == 1.0)):
        raise ValueError("departed must hold only True/False (or 1/0)")
    return x
