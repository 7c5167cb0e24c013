"""Scaling-law fits for sweep curves: a metric against the data (or any positive x) it was measured at.

Two forms, pure functions of the measured points:
- ``power_law``: y = a * x**b, a straight line in log-log space.
- ``saturating_power_law``: y = c + a * (x / x0)**b with b < 0, so y tends to ``c`` as x grows: the
  level a curve settles at (a ceiling for an accuracy, a floor for a loss). x0 is the geometric
  mean of the x values; it only keeps the fit well conditioned.
Standard errors come from the fit's covariance, scaled by the given per-point sigmas when there
are any (e.g. from confidence intervals), else by the residuals. They need more points than
parameters; with exactly as many they are None.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FORMS = ("power_law", "saturating_power_law")
MIN_POINTS = {"power_law": 2, "saturating_power_law": 3}


@dataclass
class Fit:
    form: str
    params: dict[str, float]
    stderr: dict[str, float | None]
    n: int
    rmse: float
    x0: float = 1.0
    extra: dict = field(default_factory=dict)

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        p = self.params
        if self.form == "power_law":
            return p["a"] * x ** p["b"]  # Kaplan et al. 2020, Eq. 1.2
        return p["c"] + p["a"] * (x / self.x0) ** p["b"]  # Hoffmann et al. 2022, Eq. 2, data term

    def formula(self) -> str:
        p = self.params
        if self.form == "power_law":
            return f"y = {p['a']:.4g} * x^{p['b']:.4g}"
        sign = "-" if p["a"] < 0 else "+"
        return f"y = {p['c']:.4g} {sign} {abs(p['a']):.4g} * (x/{self.x0:.4g})^{p['b']:.4g}"

    def as_dict(self) -> dict:
        return {"form": self.form, "params": self.params, "stderr": self.stderr, "x0": self.x0, "n": self.n,
                "rmse": self.rmse, "formula": self.formula(), **self.extra}


def _check(form: str, x, y, sigma) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"fit: x and y must be 1-D and of one length, got {x.shape} and {y.shape}")
    if len(x) < MIN_POINTS[form]:
        raise ValueError(f"fit {form}: needs at least {MIN_POINTS[form]} points, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fit: x and y must be finite")
    if (x <= 0).any():
        raise ValueError(f"fit {form}: x must be > 0, got {x.min():g}")
    if len(np.unique(x)) < MIN_POINTS[form]:
        raise ValueError(f"fit {form}: needs {MIN_POINTS[form]} distinct x values, got {len(np.unique(x))}")
    if form == "power_law" and (y <= 0).any():
        raise ValueError(f"fit power_law: y must be > 0 (it is fitted in log space), got {y.min():g}")
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64)
        if sigma.shape != x.shape:
            raise ValueError(f"fit: sigma must be finite, > 0, one per point, got {sigma.shape} for {x.shape} points")
        bad = np.flatnonzero(~(np.isfinite(sigma) & (sigma > 0)))
        if len(bad):
            raise ValueError(f"fit: sigma must be finite, > 0, one per point; point {bad[0] + 1} of {len(x)} (x = {x[bad[0]]:g}) "
                             f"has {sigma[bad[0]]:g}")
    return x, y, sigma


def fit_power_law(x, y, sigma=None) -> Fit:
    """y = a * x**b: log y = log a + b log x by (weighted) least squares (Kaplan et al. 2020, eq. 1.2:
    L(D) = (D_c / D)**alpha_D, i.e. a = D_c**alpha_D and b = -alpha_D)."""
    x, y, sigma = _check("power_law", x, y, sigma)
    lx, ly = np.log(x), np.log(y)
    # an error sigma on y is sigma / y on log y
    w = None if sigma is None else y / sigma
    A = np.stack([np.ones_like(lx), lx], axis=1)
    Aw, lyw = (A, ly) if w is None else (A * w[:, None], ly * w)
    coef, *_ = np.linalg.lstsq(Aw, lyw, rcond=None)  # Kaplan et al. 2020, Eq. 1.2, linear in log x
    se = _stderr(Aw, lyw - Aw @ coef, absolute=sigma is not None)
    fit = Fit("power_law", {"a": float(np.exp(coef[0])), "b": float(coef[1])}, {"log_a": se[0], "b": se[1]}, len(x), 0.0)
    fit.rmse = _rmse(fit, x, y)
    return fit


def _rmse(fit: Fit, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((fit.predict(x) - y) ** 2)))


def _stderr(J: np.ndarray, resid: np.ndarray, absolute: bool) -> list[float | None]:
    """Parameter standard errors of a least-squares fit with (weighted) Jacobian J at the optimum:
    sqrt(diag((J^T J)^-1) * s^2), s^2 = 1 for sigmas taken as absolute, else the residual variance."""
    n, k = J.shape
    if n <= k:
        return [None] * k
    cov = np.linalg.pinv(J.T @ J)
    s2 = 1.0 if absolute else float(resid @ resid) / (n - k)
    return [float(np.sqrt(max(v, 0.0) * s2)) for v in np.diag(cov)]


def _linear_ca(u: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """For a fixed b, y = c + a * u is linear in (c, a): its weighted least squares and residual sum."""
    A = np.stack([np.ones_like(u), u], axis=1) * w[:, None]
    coef, *_ = np.linalg.lstsq(A, y * w, rcond=None)
    r = A @ coef - y * w
    return coef, float(r @ r)


def fit_saturating_power_law(x, y, sigma=None, b_range: tuple[float, float] = (-4.0, -0.01)) -> Fit:
    """y = c + a * (x/x0)**b with b in b_range (< 0): c is where the curve levels off (the data term
    of Hoffmann et al. 2022, eq. 2, E + B / D**beta: c = E, a = B * x0**-beta, b = -beta; a < 0 for a
    metric that rises towards c). For each b the best (c, a) is a linear least squares, so b is found
    by a bounded 1-D search; the standard errors are those of all three at the optimum."""
    from scipy.optimize import minimize_scalar

    x, y, sigma = _check("saturating_power_law", x, y, sigma)
    x0 = float(np.exp(np.mean(np.log(x))))
    t = x / x0
    w = np.ones_like(y) if sigma is None else 1.0 / sigma

    def sse(b):
        return _linear_ca(t**b, y, w)[1]

    grid = np.linspace(*b_range, 200)
    b0 = grid[int(np.argmin([sse(b) for b in grid]))]
    step = grid[1] - grid[0]
    res = minimize_scalar(sse, bounds=(max(b_range[0], b0 - step), min(b_range[1], b0 + step)), method="bounded",
                          options={"xatol": 1e-10})
    b = float(res.x)
    (c, a), _ = _linear_ca(t**b, y, w)
    # Jacobian of the model in (c, a, b), weighted, at the optimum
    J = np.stack([np.ones_like(t), t**b, a * t**b * np.log(t)], axis=1) * w[:, None]
    resid = (c + a * t**b - y) * w  # least squares on the model above (Hoffmann et al. fit Eq. 2 with a Huber loss)
    se = _stderr(J, resid, absolute=sigma is not None)
    fit = Fit("saturating_power_law", {"c": float(c), "a": float(a), "b": b},
              {"c": se[0], "a": se[1], "b": se[2]}, len(x), 0.0, x0=x0)
    fit.rmse = _rmse(fit, x, y)
    if min(abs(b - b_range[0]), abs(b - b_range[1])) < 1e-6:
        fit.extra["at_bound"] = True  # the data do not pin b down inside the range: read c with care
    return fit


def fit(form: str, x, y, sigma=None) -> Fit:
    if form not in FORMS:
        raise ValueError(f"fit: unknown form {form!r} (known: {', '.join(FORMS)})")
    return (fit_power_law if form == "power_law" else fit_saturating_power_law)(x, y, sigma)
