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
