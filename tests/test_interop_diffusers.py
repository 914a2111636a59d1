"""diffusers interop: UNets as denoisers, and fewstep solvers inside diffusers pipelines.

A tiny randomly initialised UNet2DModel stands in for a trained one: the checks are about the
conversions (process, prediction type, timestep) and the solver plumbing, not sample quality.
"""

import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2

from fewstep import sample  # noqa: E402
from fewstep.interop import FewstepScheduler, denoiser_from_diffusers, load_diffusers_unet  # noqa: E402
from fewstep.interop.diffusers import process_from_scheduler_config  # noqa: E402

BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions run far faster on one thread (and do not stall on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
    ).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def noise_of(seed=0, batch=2):
    return torch.randn((batch, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


def rmse(a, b):
    return ((a - b) ** 2).mean().sqrt().item()


def x0_manual(unet, scheduler, x, n):
    """x0 from the raw UNet output at integer timestep n, with the scheduler's alphas_cumprod."""
    with torch.no_grad():
        out = unet(x, torch.full((x.shape[0],), n)).sample
    ac = scheduler.alphas_cumprod[n].double()
    a, s = ac.sqrt(), (1 - ac).sqrt()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (x - s * out) / a
    if kind == "sample":
        return out
    return a * x - s * out  # v = a eps - s x0


# ---------------------------------------------------------------------------------------------
# loading and wrapping
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas"])
def test_process_matches_scheduler(schedule):
    if schedule == "trained_betas":
        kw = dict(trained_betas=torch.linspace(1e-4, 0.03, 500).tolist(), num_train_timesteps=500)
    else:
        kw = dict(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    sch = diffusers.DDPMScheduler(**kw)
    p = process_from_scheduler_config(sch.config)
    assert p.N == sch.config.num_train_timesteps
    assert torch.equal(p.alphas_cumprod, sch.alphas_cumprod.double())
    n = torch.tensor([0, 17, p.N - 1])
    assert torch.allclose(p.alpha(p.timestep_to_t(n)) ** 2, sch.alphas_cumprod[n].double(), rtol=1e-12)


@pytest.mark.parametrize("layout", ["model_dir", "pipeline_dir", "scheduler_subfolder"])
def test_load_equals_manual_conversion(unet, tmp_path, layout):
    sch = diffusers.DDPMScheduler(**BETAS)
    if layout == "model_dir":  # weights and scheduler_config.json side by side
        unet.save_pretrained(tmp_path)
        sch.save_pretrained(tmp_path)
    elif layout == "pipeline_dir":  # a saved DDPMPipeline: unet/ and scheduler/
        diffusers.DDPMPipeline(unet=unet, scheduler=sch).save_pretrained(tmp_path)
    else:
        unet.save_pretrained(tmp_path)
        sch.save_pretrained(tmp_path / "scheduler")
    D = load_diffusers_unet(tmp_path)
    assert D.prediction == "eps" and D.process.N == 1000
    x = noise_of(1)
    for n in (0, 250, 999):
        t = D.process.timestep_to_t(n)
        assert torch.allclose(D(x, t), x0_manual(unet, sch, x, n).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_types(unet, prediction_type):
    sch = diffusers.DDPMScheduler(**BETAS, prediction_type=prediction_type)
    D = denoiser_from_diffusers(unet, sch)
    assert D.prediction == {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[prediction_type]
    x = noise_of(2).double()
    for n in (3, 500, 998):
        got = D(x, D.process.timestep_to_t(n))
        assert got.dtype == torch.float64
        assert torch.allclose(got, x0_manual(unet, sch, x.float(), n).double(), rtol=1e-5, atol=1e-5)


def test_learned_variance_channels_are_dropped(unet):
    torch.manual_seed(1)
    wide = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).eval()
    sch = diffusers.DDPMScheduler(**BETAS, variance_type="learned_range")
    D = denoiser_from_diffusers(wide, sch)
    x = noise_of(3)
    with torch.no_grad():
        eps = wide(x, torch.full((2,), 100)).sample[:, :1]
    a, s = sch.alphas_cumprod[100].sqrt(), (1 - sch.alphas_cumprod[100]).sqrt()
    assert torch.allclose(D(x, D.process.timestep_to_t(100)), (x - s * eps) / a, rtol=1e-5, atol=1e-5)


def test_conditional_unet(tmp_path):
    torch.manual_seed(2)
    cond_unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12, attention_head_dim=4).eval()
    cond_unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(**BETAS, prediction_type="v_prediction").save_pretrained(tmp_path / "scheduler")
    D = load_diffusers_unet(tmp_path, subfolder="unet")
    assert D.prediction == "v"
    enc = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(0))
    ref = sample(D, noise_of(0), solver="dpm++2m", steps=4, cond={"encoder_hidden_states": enc})
    sch = FewstepScheduler(**BETAS, prediction_type="v_prediction")
    sch.set_timesteps(4)
    x = noise_of(0)
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(cond_unet(x, t, encoder_hidden_states=enc).sample, t, x).prev_sample
    assert rmse(x, ref) < 1e-5


def test_fractional_timesteps_reach_the_network(unet):
    D = denoiser_from_diffusers(unet, diffusers.DDPMScheduler(**BETAS))
    seen = []
    unet_call = D.model.model.forward
    D.model.model.forward = lambda x, t, **kw: (seen.append(t.clone()), unet_call(x, t, **kw))[1]
    try:
        D(noise_of(), torch.tensor(0.5005, dtype=torch.float64))
    finally:
        del D.model.model.forward
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0], torch.tensor(499.5))


def test_bad_paths(unet, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_diffusers_unet(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffusers_unet(empty)
    with pytest.raises(FileNotFoundError, match="unet2"):
        load_diffusers_unet(empty, subfolder="unet2")
    only_model = tmp_path / "only_model"
    unet.save_pretrained(only_model)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_diffusers_unet(only_model)
    D = load_diffusers_unet(only_model, scheduler=diffusers.DDPMScheduler(**BETAS, prediction_type="sample"))
    assert D.prediction == "x0"
    with pytest.raises(ValueError, match="prediction_type"):
        denoiser_from_diffusers(unet, {**BETAS, "prediction_type": "flow_prediction"})
    with pytest.raises(ValueError, match="zero terminal SNR"):
        denoiser_from_diffusers(unet, diffusers.DDPMScheduler(**BETAS, rescale_betas_zero_snr=True))


def test_lazy_import():
    code = ("import sys, fewstep, fewstep.interop, fewstep.interop.diffusers; "
            "assert 'diffusers' not in sys.modules, 'diffusers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_diffusers_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'fewstep\[diffusers\]'"):
        load_diffusers_unet(tmp_path)
    monkeypatch.delitem(sys.modules, "fewstep.interop.scheduler", raising=False)
    with pytest.raises(ImportError, match=r"fewstep\[diffusers\]"):
        from fewstep.interop import FewstepScheduler  # noqa: F401


# ---------------------------------------------------------------------------------------------
# FewstepScheduler inside diffusers pipelines
# ---------------------------------------------------------------------------------------------


def run_pipeline(unet, scheduler, steps, seed=0, batch=2):
    """DDPMPipeline's output, unclamped: the last prev_sample (the pipeline clamps to [0, 1])."""
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    last = []
    step = scheduler.step
    scheduler.step = lambda *a, **k: (lambda out: (last.append(out.prev_sample), out)[1])(step(*a, **k))
    try:
        images = pipe(batch_size=batch, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                      output_type="pt").images
    finally:
        del scheduler.step
    return last[-1], images


@pytest.mark.parametrize("solver", ["dpm++2m", "dpm++3m", "unipc", "ddim"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_scheduler_in_pipeline_equals_sample(unet, solver, prediction_type):
    steps = 6
    sch = FewstepScheduler(**BETAS, prediction_type=prediction_type, solver=solver)
    out, images = run_pipeline(unet, sch, steps)
    D = denoiser_from_diffusers(unet, {**BETAS, "prediction_type": prediction_type})
    ref = sample(D, noise_of(0), solver=solver, steps=steps)
    assert D.calls == steps
    assert rmse(out, ref) < 1e-5
    assert torch.allclose(images,
                          (ref / 2 + 0.5).clamp(0, 1), atol=1e-5)


def test_scheduler_from_config_and_custom_options(unet, tmp_path):
    base = diffusers.DDPMScheduler(**BETAS, prediction_type="sample")
    sch = FewstepScheduler.from_config(base.config, solver="unipc", solver_order=3, spacing="time",
                                       solver_options={"variant": "bh1"})
    assert sch.config.prediction_type == "sample" and sch.config.num_train_timesteps == 1000
    sch.save_pretrained(tmp_path)
    sch = FewstepScheduler.from_pretrained(tmp_path)
    sch.set_timesteps(5)
    assert len(sch.timesteps) == 5 and sch.timesteps[0] == 999 and sch.init_noise_sigma == pytest.approx(1.0)
    out, _ = run_pipeline(unet, sch, 5)
    D = denoiser_from_diffusers(unet, base)
    ref = sample(D, noise_of(0), solver="unipc-bh1", order=3, spacing="time", steps=5)
    assert rmse(out, ref) < 1e-5


def test_pipeline_with_fewstep_scheduler_saves_and_loads(unet, tmp_path):
    sch = FewstepScheduler.from_config(diffusers.DDPMScheduler(**BETAS).config, solver="dpm++3m")
    diffusers.DDPMPipeline(unet=unet, scheduler=sch).save_pretrained(tmp_path)
    pipe = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    assert isinstance(pipe.scheduler, FewstepScheduler) and pipe.scheduler.config.solver == "dpm++3m"
    assert load_diffusers_unet(tmp_path).prediction == "eps"  # the FewstepScheduler config is a scheduler config


def test_stochastic_solver_uses_seed(unet):
    sch = FewstepScheduler(**BETAS, solver="ddim", solver_options={"eta": 1.0}, seed=3)
    out, _ = run_pipeline(unet, sch, 5)
    D = denoiser_from_diffusers(unet, BETAS)
    ref = sample(D, noise_of(0), solver="ddim", eta=1.0, steps=5, generator=torch.Generator().manual_seed(3))
    assert rmse(out, ref) < 1e-5


def test_scheduler_errors(unet):
    with pytest.raises(ValueError, match="heun"):
        FewstepScheduler(solver="heun")
    with pytest.raises(ValueError, match="orders"):
        FewstepScheduler(solver="dpm++2m", solver_order=3)
    with pytest.raises(ValueError, match="no options"):
        FewstepScheduler(solver="dpm++2m", solver_options={"eta": 1.0})
    sch = FewstepScheduler()
    with pytest.raises(RuntimeError, match="set_timesteps"):
        sch.step(torch.zeros(1, 1, 8, 8), 999, torch.zeros(1, 1, 8, 8))


# ---------------------------------------------------------------------------------------------
# fewstep on the wrapped UNet against diffusers' own schedulers
# ---------------------------------------------------------------------------------------------


def grid_of(process, timesteps):
    return torch.cat([process.timestep_to_t(timesteps.double()), torch.zeros(1, dtype=torch.float64)])


def run_loop(unet, scheduler, noise, **set_timesteps):
    """The denoising loop of diffusers' pipelines (init_noise_sigma, scale_model_input, step)."""
    scheduler.set_timesteps(**set_timesteps)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x).prev_sample
    return x


def rel(a, b):
    """RMSE relative to the RMS of b: a random UNet gives samples of size ~100, float32 gives ~1e-7."""
    return rmse(a, b) / b.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("steps", [5, 10])
@pytest.mark.parametrize("kind", ["dpm++2m", "unipc"])
def test_fewstep_equals_diffusers_scheduler(unet, kind, steps):
    if kind == "dpm++2m":
        theirs = diffusers.DPMSolverMultistepScheduler(**BETAS, algorithm_type="dpmsolver++", solver_order=2)
        opts = dict(solver="dpm++2m", solver_options={"lower_order_final": 15})  # diffusers: below 15 steps
    else:
        theirs = diffusers.UniPCMultistepScheduler(**BETAS, solver_order=2, solver_type="bh2")
        opts = dict(solver="unipc", solver_options=None)
    ref = run_loop(unet, theirs, noise_of(0), num_inference_steps=steps)
    D = denoiser_from_diffusers(unet, theirs)
    ours = sample(D, noise_of(0), solver=opts["solver"], order=2, spacing=grid_of(D.process, theirs.timesteps),
                  steps=steps, **(opts["solver_options"] or {}))
    assert rel(ours, ref) < 1e-5
    # the same solve through FewstepScheduler at diffusers' timesteps
    sch = FewstepScheduler(**BETAS, solver_order=2, **opts)
    out = run_loop(unet, sch, noise_of(0), timesteps=theirs.timesteps)
    assert sch.num_inference_steps == steps
    assert rel(out, ref) < 1e-5
    assert rmse(out, ours) < 1e-5
