"""Power-law fits for scaling laws: ``L(x) = (x_c / x)^alpha + L_inf``, with bootstrap errors.

``x`` is a non-embedding parameter count N (Kaplan et al. 2020's L(N)) or a number of tokens D
(L(D)). Pure numpy: for each exponent on a fine log-spaced grid the model is linear in
``A = x_c^alpha`` and ``L_inf``, so those two come from a closed-form least squares (with
``A >= 0`` and ``L_inf >= 0``), and the grid point with the smallest squared error wins. Grid
search instead of a local optimiser: no starting guess, and the same answer every time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["PowerLawFit", "bootstrap_power_law", "fit_power_law", "power_law", "power_law_log"]

#: the exponents searched: 0.001 .. 5, 0.25% apart
ALPHA_GRID = np.logspace(-3, np.log10(5.0), 3600)
MIN_POINTS = 3


@dataclass
class PowerLawFit:
    """One fit. ``alpha``/``x_c`` are NaN when the loss does not fall with ``x`` (no power law to fit)."""

    alpha: float
    x_c: float
    l_inf: float
    rmse: float
    n_points: int
    at_bound: bool = False  # the exponent hit the end of the search grid: treat it with suspicion
    log_x_c: float = float("nan")  # ln(x_c): finite even where a tiny alpha puts x_c beyond float range

    def predict(self, x: Any) -> np.ndarray:
        return power_law_log(np.asarray(x, dtype=np.float64), self.alpha, self.log_x_c, self.l_inf)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def power_law(x: np.ndarray, alpha: float, x_c: float, l_inf: float) -> np.ndarray:
    """``(x_c / x)^alpha + l_inf`` (just ``l_inf`` where the fit found no decrease)."""
    if not np.isfinite(alpha):
        return np.full_like(x, l_inf, dtype=np.float64)
    return np.exp(alpha * (np.log(x_c) - np.log(x))) + l_inf


def power_law_log(x: np.ndarray, alpha: float, log_x_c: float, l_inf: float) -> np.ndarray:
    """:func:`power_law` with ``ln(x_c)`` given (safe where ``x_c`` itself overflows)."""
    if not np.isfinite(alpha):
        return np.full_like(x, l_inf, dtype=np.float64)
    return np.exp(alpha * (log_x_c - np.log(x))) + l_inf


def _check(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{what}: x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{what}: the points hold NaN or infinite values")
    if np.any(x <= 0):
        raise ValueError(f"{what}: x must be positive (a parameter or token count), got {x.min()}")
    if len(np.unique(x)) < MIN_POINTS:
        raise ValueError(f"{what}: a fit of (x_c/x)^alpha + L_inf has 3 parameters and needs at least "
                         f"{MIN_POINTS} distinct x values, got {len(np.unique(x))}")


def _best(u: np.ndarray, y: np.ndarray, floor: bool = True) -> tuple[int, float, float, float]:
    """(grid index, A, L_inf, sse) of the best fit of ``A u^-alpha + L_inf`` over ``ALPHA_GRID``
    (``floor=False``: ``L_inf`` fixed at 0, a pure power law)."""
    f = np.exp(-ALPHA_GRID[:, None] * np.log(u)[None, :])  # (G, n)
    n = y.size
    sf, sy, sff, sfy = f.sum(1), y.sum(), (f * f).sum(1), f @ y
    det = n * sff - sf * sf
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (n * sfy - sf * sy) / det
        c = (sy - a * sf) / n
    # constraints: L_inf >= 0 (then A from y alone), A >= 0 (then a flat line at the mean)
    neg_c = ~(c >= 0) | (not floor)
    a = np.where(neg_c, sfy / sff, a)
    c = np.where(neg_c, 0.0, c)
    flat = ~(a > 0)
    a = np.where(flat, 0.0, a)
    c = np.where(flat, max(sy / n, 0.0), c)
    sse = ((a[:, None] * f + c[:, None] - y[None, :]) ** 2).sum(1)
    i = int(np.argmin(sse))
    return i, float(a[i]), float(c[i]), float(sse[i])


def fit_power_law(x: Any, y: Any, what: str = "fit", floor: bool = True) -> PowerLawFit:
    """Least-squares fit of ``y = (x_c / x)^alpha + L_inf`` (in loss units) to the points;
    ``floor=False`` fixes ``L_inf = 0`` (Kaplan et al.'s pure power law)."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check(xa, ya, what)
    ref = float(np.exp(np.log(xa).mean()))  # work in x / geometric mean: well-conditioned columns
    i, a, c, sse = _best(xa / ref, ya, floor)
    rmse = float(np.sqrt(sse / ya.size))
    if a <= 0:
        return PowerLawFit(float("nan"), float("nan"), c, rmse, int(ya.size))
    alpha = float(ALPHA_GRID[i])
    # A (x/ref)^-alpha = (x_c/x)^alpha  =>  x_c = ref * A^(1/alpha)
    log_x_c = float(np.log(ref) + np.log(a) / alpha)
    x_c = float(np.exp(log_x_c)) if log_x_c < 700 else float("inf")
    return PowerLawFit(alpha, x_c, c, rmse, int(ya.size), at_bound=i in (0, ALPHA_GRID.size - 1), log_x_c=log_x_c)


def bootstrap_power_law(x: Any, y: Any, n_boot: int = 500, seed: int = 0, what: str = "fit",
                        floor: bool = True) -> dict[str, Any]:
    """The fit to all points plus bootstrap spreads (resampling the points with replacement;
    resamples with fewer than 3 distinct x are skipped). ``*_std`` are standard deviations,
    ``*_p16``/``*_p84`` the 16th/84th percentiles (a 68% interval); ``x_c`` spreads are taken in
    log space, where it is roughly symmetric."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    fit = fit_power_law(xa, ya, what, floor)
    out = fit.to_dict()
    rng = np.random.default_rng(seed)
    samples: list[tuple[float, float, float]] = []
    for _ in range(n_boot):
        idx = rng.integers(0, xa.size, xa.size)
        if len(np.unique(xa[idx])) < MIN_POINTS:
            continue
        f = fit_power_law(xa[idx], ya[idx], what, floor)
        if np.isfinite(f.alpha):
            samples.append((f.alpha, f.log_x_c, f.l_inf))
    out["bootstrap_samples"] = len(samples)
    if len(samples) >= 10:
        s = np.asarray(samples)
        for j, name in enumerate(("alpha", "log_x_c", "l_inf")):
            out[f"{name}_std"] = float(s[:, j].std(ddof=1))
            out[f"{name}_p16"], out[f"{name}_p84"] = (float(v) for v in np.percentile(s[:, j], [16, 84]))
    return out
