import pytest
import torch

from fewstep.processes import EDM, VE, Flow, TrigFlow, VPCosine, VPDiscrete, VPLinear


def all_processes():
    return [
        VPDiscrete.linear(), VPDiscrete.scaled_linear(), VPDiscrete.cosine(), VPLinear(), VPCosine(),
        EDM(), VE(), Flow(), TrigFlow(), TrigFlow(sigma_data=1.0),
    ]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Small models: one intra-op thread is faster and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
