"""Flow-matching ODE solvers, k-diffusion style: one short function per solver.

Every solver has the same shape::

    x = solver(denoise, x, sigmas, callback=None)

* ``denoise(x, step) -> x0``: the model's clean-latent prediction at ``sigmas[step]``
  (for Wan: ``x0 = x − σ·v``). The step index lets the caller pick the model timestep,
  the expert and the CFG scale of that step.
* ``sigmas``: ``[steps + 1]`` descending noise levels (a :class:`~.schedules.Schedule`'s sigmas).
* ``callback(step, x_next, x0)``: called after every step (progress, previews).

Flow matching uses ``x_σ = (1−σ)·x0 + σ·ε``, so ``α = 1 − σ`` and the half-log-SNR is
``λ = log(1−σ) − log σ`` (−∞ at σ = 1, +∞ at σ = 0).

The multistep solvers match the official Wan schedulers (and diffusers' ``UniPCMultistepScheduler``
/ ``DPMSolverMultistepScheduler`` given the same sigmas): UniPC with bh2, predict-x0, a UniC
corrector from the second step on and first order on the first and last steps; DPM++ 2M as
"dpmsolver++" with the midpoint rule and a first-order final step.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

Denoiser = Callable[[torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def _sigma(sigmas: torch.Tensor, i: int) -> float:
    return float(sigmas[i])


def half_log_snr(sigma: float) -> float:
    """λ = log((1−σ)/σ); the solvers' time variable. Infinite at the ends of the schedule."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


def _done(callback: Optional[StepCallback], step: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    if callback is not None:
        callback(step, x, x0)


def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                 callback: Optional[StepCallback] = None) -> torch.Tensor:
    """First-order Euler over the velocity ``(x − x0)/σ``; memoryless, so it splits exactly."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _sigma(sigmas, i), _sigma(sigmas, i + 1)
        x0 = denoise(x, i)
        velocity = (x - x0) / sigma
        x = x + velocity * (sigma_next - sigma)
        _done(callback, i, x, x0)
    return x


def sample_distilled(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                     callback: Optional[StepCallback] = None,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The step rule of the 4-step distilled (lightx2v / Lightning) models, run at cfg 1.

    Each step predicts x0 and re-noises it to the next sigma. Without a ``generator`` the noise is
    the model's own predicted noise (Wan2.2-Lightning / LightX2V's 2.2 scheduler; equal to Euler);
    with one, fresh Gaussian noise is drawn on the generator's device (LightX2V's 2.1 scheduler).
    """
    last = len(sigmas) - 2
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _sigma(sigmas, i), _sigma(sigmas, i + 1)
        x0 = denoise(x, i)
        if i == last and sigma_next == 0.0:
            x = x0
        elif generator is None:
            x = x0 + (x - x0) * (sigma_next / sigma)
        else:
            fresh = torch.randn(x.shape, generator=generator, dtype=torch.float32,
                                device=generator.device).to(x)
            x = (1.0 - sigma_next) * x0 + sigma_next * fresh
        _done(callback, i, x, x0)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                    callback: Optional[StepCallback] = None) -> torch.Tensor:
    """DPM-Solver++(2M), midpoint rule, data prediction; first order on the first and last step.

    Step s → t with h = λ_t − λ_s:  x_t = (σ_t/σ_s)·x − α_t·(e^{−h} − 1)·(D0 + ½·D1),
    D0 = x0_s, D1 = (x0_s − x0_prev)·h/h_prev (D1 = 0 on first-order steps).
    """
    steps = len(sigmas) - 1
    previous: Optional[torch.Tensor] = None
    for i in range(steps):
        sigma_s, sigma_t = _sigma(sigmas, i), _sigma(sigmas, i + 1)
        x0 = denoise(x, i)
        lam_s, lam_t = half_log_snr(sigma_s), half_log_snr(sigma_t)
        h = lam_t - lam_s
        alpha_t = 1.0 - sigma_t
        decay = math.exp(-h) - 1.0                       # e^{−h} − 1, in [−1, 0)
        ratio = sigma_t / sigma_s
        first_order = previous is None or i == steps - 1
        correction = 0.0
        if not first_order:
            h_prev = lam_s - half_log_snr(_sigma(sigmas, i - 1))
            # h_prev = ∞ when the previous sigma was exactly 1: the history term vanishes.
            if math.isfinite(h_prev):
                correction = 0.5 * (h / h_prev)
        update = x0 if correction == 0.0 else x0 + correction * (x0 - previous)
        x = ratio * x - (alpha_t * decay) * update
        previous = x0
        _done(callback, i, x, x0)
    return x


def _unipc_coefficients(h: float, order: int, r: Optional[float]) -> list[float]:
    """UniC weights (bh2, predict-x0) for the history term(s) and the new-model term.

    Solves ``R·ρ = b`` with ``R = [r^0; r^1]`` over nodes ``(r, 1)`` (order 2) or takes ρ = ½
    (order 1). ``b_k = k!·φ_{k+1}(−h)/B(h)`` with ``B(h) = e^{−h} − 1`` (bh2).
    """
    hh = -h
    phi_1 = math.expm1(hh)                               # h·φ1
    b_h = phi_1                                          # bh2
    phi_k = phi_1 / hh - 1.0
    b1 = phi_k / b_h
    if order == 1:
        return [0.5]
    phi_k2 = phi_k / hh - 0.5
    b2 = 2.0 * phi_k2 / b_h
    assert r is not None
    rho_hist = (b1 - b2) / (1.0 - r)
    return [rho_hist, b1 - rho_hist]


def sample_unipc(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                 callback: Optional[StepCallback] = None) -> torch.Tensor:
    """UniPC, order 2, bh2, predict-x0, with the UniC corrector (official Wan default solver).

    At step i: the corrector refines the current sample with the fresh x0 (for i ≥ 1), then the
    predictor steps to ``sigmas[i+1]`` with order ``min(2, i+1, steps−i)``. With σ_end = 0 the
    last step returns exactly the final x0.
    """
    steps = len(sigmas) - 1
    lam = [half_log_snr(_sigma(sigmas, i)) for i in range(steps + 1)]
    history: list[torch.Tensor] = []                     # x0 predictions, newest last
    last_x: Optional[torch.Tensor] = None                # sample before the last predictor step
    last_order = 1
    for i in range(steps):
        x0 = denoise(x, i)
        if i > 0 and last_x is not None:
            x = _unic_correct(last_x, x0, history, sigmas, lam, i, last_order)
        history = (history + [x0])[-2:]
        order = min(2, steps - i, len(history))
        last_x = x
        x = _unip_predict(x, history, sigmas, lam, i, order)
        last_order = order
        _done(callback, i, x, x0)
    return x


def _unip_predict(x: torch.Tensor, history: list[torch.Tensor], sigmas: torch.Tensor,
                  lam: list[float], i: int, order: int) -> torch.Tensor:
    """UniP predictor from sigmas[i] to sigmas[i+1] (bh2, ρ = ½ for the order-2 term)."""
    sigma_s, sigma_t = _sigma(sigmas, i), _sigma(sigmas, i + 1)
    alpha_t = 1.0 - sigma_t
    h = lam[i + 1] - lam[i]
    phi_1 = math.expm1(-h)
    x_t = (sigma_t / sigma_s) * x - (alpha_t * phi_1) * history[-1]
    if order == 2:
        r = (lam[i - 1] - lam[i]) / h
        d1 = (history[-2] - history[-1]) / r
        x_t = x_t - (alpha_t * phi_1 * 0.5) * d1
    return x_t


def _unic_correct(last_x: torch.Tensor, x0_new: torch.Tensor, history: list[torch.Tensor],
                  sigmas: torch.Tensor, lam: list[float], i: int, order: int) -> torch.Tensor:
    """UniC corrector: redo the step sigmas[i−1] → sigmas[i] using the new x0 at sigmas[i]."""
    sigma_s, sigma_t = _sigma(sigmas, i - 1), _sigma(sigmas, i)
    alpha_t = 1.0 - sigma_t
    h = lam[i] - lam[i - 1]
    phi_1 = math.expm1(-h)
    m0 = history[-1]
    x_t = (sigma_t / sigma_s) * last_x - (alpha_t * phi_1) * m0
    if order == 1:
        rho_new = _unipc_coefficients(h, 1, None)[0]
        correction = rho_new * (x0_new - m0)
    else:
        r = (lam[i - 2] - lam[i - 1]) / h
        rho_hist, rho_new = _unipc_coefficients(h, 2, r)
        d1 = (history[-2] - m0) / r
        correction = rho_hist * d1 + rho_new * (x0_new - m0)
    return x_t - (alpha_t * phi_1) * correction


Solver = Callable[..., torch.Tensor]

SOLVERS: dict[str, Solver] = {
    "euler": sample_euler,
    "unipc": sample_unipc,
    "dpm++": sample_dpmpp_2m,
    "distilled": sample_distilled,
}


def get_solver(name: str) -> Solver:
    """Solver by name, with an error that lists the valid names."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}")
    return SOLVERS[name]
