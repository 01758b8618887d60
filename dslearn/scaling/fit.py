"""Fitting scaling laws to our own runs — with uncertainties, not bare point estimates.

Three fits, as in DeepSeek-LLM §3 and the Chinchilla cross-check:

1. ``fit_power_law(x, y)``: y = k·x^a by least squares in log–log space (η_opt(C), B_opt(C), M_opt(C)).
2. ``fit_isoflop(runs)`` (Chinchilla approach 2): at each budget C, fit a parabola to loss against log M;
   its vertex is M_opt(C); then D_opt = C / M_opt and power laws through the vertices.
3. ``fit_parametric(M, D, loss)`` (approach 3): L = E + A/M^α + B/D^β, fitted by the summed Huber loss
   (δ = 1e-3) between log L and log of the prediction, with L-BFGS from a grid of starts. The implied
   allocation exponent is a = β/(α+β): M_opt ∝ C^a, D_opt ∝ C^(1−a).

Uncertainty comes from the bootstrap: resample the runs (within each budget for IsoFLOP), refit, and
report the standard deviation of the exponent across resamples.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .laws import PowerLaw


def _positive(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite, got {arr.tolist()}")
    return arr


def _line(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def fit_power_law(x, y, n_bootstrap: int = 1000, seed: int = 0, name: str = "") -> PowerLaw:
    """y = coef · x^exponent. Needs at least 3 points with at least 2 distinct x."""
    x, y = _positive("x", x), _positive("y", y)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    if len(x) < 3 or len(np.unique(x)) < 2:
        raise ValueError(f"a power-law fit with an uncertainty needs at least 3 points and 2 distinct x; got {len(x)}")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = _line(lx, ly)
    rng = np.random.default_rng(seed)
    slopes, coefs = [], []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(lx[idx])) < 2:
            continue
        s, i = _line(lx[idx], ly[idx])
        slopes.append(s)
        coefs.append(math.exp(i))
    if not slopes:
        return PowerLaw(math.exp(intercept), slope, name=name)
    return PowerLaw(math.exp(intercept), slope, float(np.std(slopes)), float(np.std(coefs)), name)


# --- approach 2: IsoFLOP parabolas ---------------------------------------------------------
@dataclass
class IsoFLOPFit:
    budgets: list[float]
    M_opt: list[float]  # vertex of each budget's parabola (FLOPs/token)
    D_opt: list[float]  # C / M_opt (tokens)
    loss_opt: list[float]
    parabolas: dict[float, tuple[float, float, float]]  # C → (a, b, c) of loss = a·u² + b·u + c, u = ln M
    in_range: list[bool]  # is each vertex inside the widths actually trained?
    M_law: PowerLaw
    D_law: PowerLaw
    bootstrap_exponents: list[float] = field(default_factory=list)


def _vertex(u: np.ndarray, loss: np.ndarray, C: float) -> tuple[float, tuple[float, float, float]]:
    a, b, c = np.polyfit(u, loss, 2)
    if a <= 0:
        raise ValueError(f"the losses at budget C={C:.3g} have no minimum (the parabola opens downward): "
                         f"the widths do not bracket the optimum; widen or re-centre the grid")
    return -b / (2 * a), (float(a), float(b), float(c))


def fit_isoflop(budgets, M, loss, n_bootstrap: int = 500, seed: int = 0) -> IsoFLOPFit:
    """Runs given as parallel sequences (budget C, model scale M, final loss). At least 3 sizes per
    budget and at least 3 budgets."""
    C_all, M_all, L_all = _positive("budgets", budgets), _positive("M", M), np.asarray(loss, dtype=np.float64)
    if not (len(C_all) == len(M_all) == len(L_all)):
        raise ValueError("budgets, M and loss must have the same length")
    if not np.all(np.isfinite(L_all)):
        raise ValueError("losses must be finite (drop diverged runs before fitting)")
    groups = {float(c): np.flatnonzero(C_all == c) for c in np.unique(C_all)}
    small = {c: len(ix) for c, ix in groups.items() if len(np.unique(M_all[ix])) < 3}
    if small:
        raise ValueError(f"each budget needs at least 3 distinct model sizes; too few at {small}")
    if len(groups) < 3:
        raise ValueError(f"fitting M_opt(C) with an uncertainty needs at least 3 budgets, got {len(groups)}")
    cs = sorted(groups)
    vertices, parabolas, in_range, loss_opt = [], {}, [], []
    for c in cs:
        ix = groups[c]
        u = np.log(M_all[ix])
        v, abc = _vertex(u, L_all[ix], c)
        vertices.append(math.exp(v))
        parabolas[c] = abc
        in_range.append(bool(u.min() <= v <= u.max()))
        loss_opt.append(abc[0] * v * v + abc[1] * v + abc[2])
    cs_arr, m_opt = np.array(cs), np.array(vertices)
    M_law = fit_power_law(cs_arr, m_opt, n_bootstrap=0, name="M_opt")
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_bootstrap):  # resample runs within each budget, refit every vertex and the law
        try:
            vs = []
            for c in cs:
                ix = rng.choice(groups[c], len(groups[c]))
                if len(np.unique(M_all[ix])) < 3:
                    raise ValueError
                vs.append(math.exp(_vertex(np.log(M_all[ix]), L_all[ix], c)[0]))
        except ValueError:
            continue
        boot.append(_line(np.log(cs_arr), np.log(vs))[0])
    std = float(np.std(boot)) if boot else None
    M_law = PowerLaw(M_law.coef, M_law.exponent, std, None, "M_opt")
    D_law = PowerLaw(1 / M_law.coef, 1 - M_law.exponent, std, None, "D_opt")  # D_opt = C / M_opt
    return IsoFLOPFit(cs, vertices, list(cs_arr / m_opt), loss_opt, parabolas, in_range, M_law, D_law, boot)


# --- approach 3: the parametric loss -------------------------------------------------------
@dataclass
class ParametricFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    bootstrap_a: list[float] = field(default_factory=list)

    @property
    def a(self) -> float:
        """Allocation exponent: M_opt ∝ C^a with a = β/(α+β)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def a_std(self) -> float | None:
        return float(np.std(self.bootstrap_a)) if self.bootstrap_a else None

    def loss(self, M, D):
        M, D = np.asarray(M, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / M**self.alpha + self.B / D**self.beta

    def optimal(self, C: float) -> tuple[float, float]:
        """(M_opt, D_opt) minimising the fitted loss under M·D = C."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        M = G * C ** self.a
        return M, C / M


def _huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.where(r.abs() <= delta, 0.5 * r**2, delta * (r.abs() - 0.5 * delta))


def _fit_parametric_once(lm, ld, ll, delta, starts) -> tuple[float, list[float]]:
    def objective(p):
        a, b, e, al, be = p  # A = e^a, B = e^b, E = e^e
        pred = torch.logsumexp(torch.stack([a - al * lm, b - be * ld, e.expand_as(lm)]), 0)  # log L̂
        return _huber(pred - ll, delta).sum()

    best = (math.inf, None)
    for start in starts:
        p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([p], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure(p=p, opt=opt):
            opt.zero_grad()
            obj = objective(p)
            obj.backward()
            return obj

        opt.step(closure)
        with torch.no_grad():
            value = objective(p).item()
        if math.isfinite(value) and value < best[0]:
            best = (value, p.detach().tolist())
    if best[1] is None:
        raise ValueError("the parametric fit failed from every starting point")
    return best


def fit_parametric(M, D, loss, delta: float = 1e-3, n_bootstrap: int = 20, seed: int = 0,
                   grid: dict | None = None) -> ParametricFit:
    """L = E + A/M^α + B/D^β by summed Huber loss on log L, L-BFGS from a grid of starts."""
    M, D, L = _positive("M", M), _positive("D", D), _positive("loss", loss)
    if not len(M) == len(D) == len(L):
        raise ValueError("M, D and loss must have the same length")
    if len(M) < 6:
        raise ValueError(f"the parametric fit has 5 parameters; give it at least 6 runs, got {len(M)}")
    grid = grid or {"a": [0.0, 6.0, 12.0], "b": [0.0, 6.0, 12.0], "e": [-1.0, 0.0, 1.0],
                    "alpha": [0.2, 0.5, 0.8], "beta": [0.2, 0.5, 0.8]}
    starts = list(itertools.product(*(grid[k] for k in ("a", "b", "e", "alpha", "beta"))))
    t = lambda v: torch.tensor(np.log(v), dtype=torch.float64)  # noqa: E731
    obj, (a, b, e, al, be) = _fit_parametric_once(t(M), t(D), t(L), delta, starts)
    fit = ParametricFit(math.exp(e), math.exp(a), math.exp(b), al, be, obj)
    rng = np.random.default_rng(seed)
    best_start = [(a, b, e, al, be)]  # bootstrap refits start from the full fit (and a few grid points)
    for _ in range(n_bootstrap):
        ix = rng.integers(0, len(M), len(M))
        try:
            _, (_, _, _, al_b, be_b) = _fit_parametric_once(t(M[ix]), t(D[ix]), t(L[ix]), delta,
                                                            best_start + starts[:: max(1, len(starts) // 8)])
        except ValueError:
            continue
        if al_b + be_b > 0:
            fit.bootstrap_a.append(be_b / (al_b + be_b))
    return fit
