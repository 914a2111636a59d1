"""Training-free ODE/SDE solvers: plain functions over (denoiser, x, time grid)."""

from .ddim import ddim
from .dpm_solver import dpm_adaptive, dpm_multistep, dpm_singlestep, fast_orders, sde_dpmpp_2m
from .edm import edm_sampler
from .fitted import FittedSolver, fitted_solve, solver_weights
from .unipc import unipc

__all__ = ["ddim", "dpm_multistep", "dpm_singlestep", "dpm_adaptive", "sde_dpmpp_2m", "fast_orders",
           "edm_sampler", "unipc", "FittedSolver", "fitted_solve", "solver_weights"]
