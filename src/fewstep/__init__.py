"""fewstep: fast diffusion models (few-step solvers, faster training, consistency distillation)."""

from .predictions import PREDICTIONS, Denoiser, from_x0, to_x0, wrap
from .processes import EDM, VE, Flow, Process, TrigFlow, VPCosine, VPDiscrete, VPLinear, convert, get_process
from .sample import SOLVERS, sample
from .fitting import fit_solver
from .solvers.fitted import FittedSolver
from .spacing import make_grid

__version__ = "0.1.0"

__all__ = [
    "Process", "VPDiscrete", "VPLinear", "VPCosine", "EDM", "VE", "Flow", "TrigFlow", "convert", "get_process",
    "PREDICTIONS", "Denoiser", "wrap", "to_x0", "from_x0", "sample", "SOLVERS", "make_grid", "fit_solver", "FittedSolver",
]
