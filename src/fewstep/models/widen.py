"""Function-preserving widening of a UNet: more channels per level, the same function at the start.

A consistency student is capacity-limited (its one step must do what the teacher does in many), and
on a CPU the cheapest capacity is at the coarse levels: on unet-mnist at 16 channels, channel_mult
(1, 2, 4) instead of (1, 2, 2) has 2.4x the parameters for ~1.2x the time per call (BENCHMARKS.md,
section 2). `widen_unet(net, channel_mult)` grows a trained network into that wider layout without
losing what it learned, in the spirit of Net2Net (Chen, Goodfellow & Shlens 2016, "Net2Net:
accelerating learning via knowledge transfer") but with zero-initialised cross weights instead of
unit duplication (as in Shen et al. 2022, "Staged training for transformer language models"):

* every old channel keeps its index within its feature block (old channels first, new after);
* weights from new input channels into old output channels are 0, so the old channels compute exactly
  what they did; the new channels' own weights keep the new network's random initialisation, so
  gradients reach them at once (their outgoing weights into old channels are trained from 0);
* GroupNorm statistics are unchanged when every group keeps its members: the group size (channels
  per group, `group_count`) must be the same in the old and the new layout for every norm;
* self-attention: with one head its dot products gain the new channels, which start with key
  weights 0, and the 1/sqrt(d) scale is kept by scaling the old query weights by sqrt(d_new / d_old);
  with several heads each head must keep its width (d_old == d_new).

sCM's adaptive double normalisation cannot be widened this way (its pixel norm over the channels of
the embedding's scale and shift would include the new channels) and is refused. The result is
checked: the widened network must reproduce the old one's output on a random input to float32
round-off, or a ValueError says so. Only `channel_mult` changes (each entry >= the old one);
the time embedding and every other setting are kept.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from .attention import SelfAttention2d, group_count
from .unet import UNet

__all__ = ["widen_unet"]

Space = list  # a feature block as segments [(old width, new width), ...], concatenated in order


def _index(space: Space) -> tuple[Tensor, Tensor]:
    """(new indices of the old channels, new indices of the new channels) of a feature block."""
    old, new, start = [], [], 0
    for w_old, w_new in space:
        old.extend(range(start, start + w_old))
        new.extend(range(start + w_old, start + w_new))
        start += w_new
    return torch.tensor(old, dtype=torch.long), torch.tensor(new, dtype=torch.long)


def _width(space: Space, which: int) -> int:
    return sum(seg[which] for seg in space)


def _check_groups(space: Space, where: str) -> None:
    """GroupNorm over this block keeps every old group's members only if the group size is the same
    and every segment boundary falls on a group boundary."""
    c_old, c_new = _width(space, 0), _width(space, 1)
    size_old, size_new = c_old // group_count(c_old), c_new // group_count(c_new)
    if size_old != size_new or any(w % size_old for seg in space for w in seg):
        raise ValueError(f"widen_unet: the GroupNorm of {where} has {size_old} channels per group before and "
                         f"{size_new} after (segments {space}); widening would change its statistics. "
                         "Choose a channel_mult whose widths keep the group size")


def _copy_param(new: Tensor, old: Tensor, out: Space | None, inp: Space | None) -> None:
    """Write `old` into the old-channel positions of `new` (in place); zero the weights from new input
    channels into old output channels. out / inp: the blocks of dimensions 0 / 1 (None: unchanged)."""
    o_old = _index(out)[0] if out is not None else torch.arange(old.shape[0])
    if old.dim() == 1:
        new[o_old] = old
        return
    i_old, i_new = _index(inp) if inp is not None else (torch.arange(old.shape[1]), torch.tensor([], dtype=torch.long))
    block = new[o_old]
    block[:, i_old] = old
    block[:, i_new] = 0
    new[o_old] = block


def _layouts(old_cfg, new_cfg) -> dict[str, tuple[Space | None, Space | None]]:
    """{module path: (output block, input block)} for every conv / linear / norm whose width changes,
    replaying UNet.__init__ for both configs."""
    ch0 = old_cfg.channels
    lay: dict[str, tuple] = {}

    def seg(m_old, m_new):
        return [(ch0 * m_old, ch0 * m_new)]

    def res(path, inp, out):
        lay[f"{path}.norm1"] = (inp, None)
        lay[f"{path}.conv1"] = (out, inp)
        lay[f"{path}.emb"] = (out + out, None)  # [scale, shift]
        lay[f"{path}.norm2"] = (out, None)
        lay[f"{path}.conv2"] = (out, out)
        lay[f"{path}.skip"] = (out, inp)
        _check_groups(inp, f"{path}.norm1")
        _check_groups(out, f"{path}.norm2")

    def attn(path, c):
        lay[f"{path}.norm"] = (c, None)
        lay[f"{path}.qkv"] = (c + c + c, c)
        lay[f"{path}.proj"] = (c, c)
        _check_groups(c, f"{path}.norm")

    cur = [(ch0, ch0)]
    lay["conv_in"] = (cur, None)
    skips, i = [cur], 0
    sizes, levels = old_cfg.level_sizes(), len(old_cfg.channel_mult)
    for level, (m_old, m_new) in enumerate(zip(old_cfg.channel_mult, new_cfg.channel_mult)):
        for _ in range(old_cfg.num_blocks):
            res(f"down.{i}.res", cur, seg(m_old, m_new))
            cur = seg(m_old, m_new)
            if sizes[level] in old_cfg.attn_resolutions:
                attn(f"down.{i}.attn", cur)
            skips.append(cur)
            i += 1
        if level != levels - 1:
            lay[f"down.{i}.conv"] = (cur, cur)
            skips.append(cur)
            i += 1
    res("mid.0.res", cur, cur)
    if old_cfg.mid_attention:
        attn("mid.0.attn", cur)
    res("mid.1.res", cur, cur)
    i = 0
    for level in reversed(range(levels)):
        out = seg(old_cfg.channel_mult[level], new_cfg.channel_mult[level])
        for _ in range(old_cfg.num_blocks + 1):
            res(f"up.{i}.res", cur + skips.pop(), out)
            cur = out
            if sizes[level] in old_cfg.attn_resolutions:
                attn(f"up.{i}.attn", cur)
            i += 1
        if level != 0:
            lay[f"up.{i}.conv"] = (cur, cur)
            i += 1
    lay["norm_out"] = (cur, None)
    lay["conv_out"] = (None, cur)
    _check_groups(cur, "norm_out")
    return lay


def _fix_attention(new_net: UNet, path: str, c: Space, head_channels: int) -> None:
    """Keep each head's dot products at widening: new key rows 0, old query rows scaled for 1/sqrt(d)."""
    c_old, c_new = _width(c, 0), _width(c, 1)
    h_old, h_new = max(1, c_old // head_channels), max(1, c_new // head_channels)
    if h_old == 1 and h_new == 1:
        scale = math.sqrt(c_new / c_old)
    elif c_old // h_old == c_new // h_new:
        scale = 1.0  # every old head keeps its width and channels; the new heads are all new channels
    else:
        raise ValueError(f"widen_unet: {path} goes from {h_old} heads of {c_old // h_old} to {h_new} heads of "
                         f"{c_new // h_new} channels; only one head, or an unchanged head width, can be widened")
    qkv = new_net.get_submodule(f"{path}.qkv")
    old_idx, new_idx = _index(c)
    with torch.no_grad():
        for p in (qkv.weight, qkv.bias):
            p[old_idx] *= scale  # q rows come first
            p[c_new + new_idx] = 0  # the new channels' key rows


def _identity_skip(net: UNet, name: str) -> Tensor:
    """The weight (or zero bias) of a 1x1 conv equal to the old network's identity skip `name`."""
    block = net.get_submodule(name.rsplit(".", 2)[0])
    c = block.conv2.out_channels
    p = block.conv2.weight
    if name.endswith(".weight"):
        return torch.eye(c, device=p.device, dtype=p.dtype)[:, :, None, None]
    return torch.zeros(c, device=p.device, dtype=p.dtype)


def widen_unet(net: UNet, channel_mult, seed: int = 0) -> UNet:
    """A new UNet with `channel_mult` (each entry >= the old) computing the same function as `net`
    (module docstring). The new channels' weights are drawn with torch's default initialisation under
    `seed`. `net` is not modified."""
    if not isinstance(net, UNet):
        raise ValueError(f"widen_unet needs a fewstep UNet, got {type(net).__name__}")
    old_cfg = net.config
    if old_cfg.adaptive_double_norm:
        raise ValueError("widen_unet: adaptive double normalisation pixel-normalises the embedding's scale and "
                         "shift over all channels, so new channels change the old ones; it cannot be widened")
    channel_mult = tuple(int(m) for m in channel_mult)
    if len(channel_mult) != len(old_cfg.channel_mult):
        raise ValueError(f"widen_unet: channel_mult {channel_mult} must have {len(old_cfg.channel_mult)} levels "
                         f"like the network's {old_cfg.channel_mult}")
    if any(n < o for n, o in zip(channel_mult, old_cfg.channel_mult)):
        raise ValueError(f"widen_unet: channel_mult {channel_mult} narrows the network's {old_cfg.channel_mult}; "
                         "only widening preserves the function")
    new_cfg = old_cfg.replace(channel_mult=channel_mult)
    layouts = _layouts(old_cfg, new_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_net = new_cfg.build()
    new_net = new_net.to(next(net.parameters()).device, next(net.parameters()).dtype)
    old_params = dict(net.named_parameters())
    lost = sorted(set(old_params) - set(dict(new_net.named_parameters())))
    if lost:
        raise ValueError(f"widen_unet: channel_mult {channel_mult} turns learned skip projections into identities "
                         f"({', '.join(lost[:4])}); widen the levels so that every block keeps its skip kind")
    with torch.no_grad():
        for name, p in new_net.named_parameters():
            old = old_params.get(name)
            if old is None:  # a residual skip that was the identity needs a 1x1 conv now: identity on the old channels
                old = _identity_skip(net, name)
            module, _, kind = name.rpartition(".")
            out, inp = layouts.get(module, (None, None))
            if p.shape == old.shape:
                p.copy_(old)
            else:
                _copy_param(p, old, out, inp if kind == "weight" else None)
        for path, module in new_net.named_modules():
            if isinstance(module, SelfAttention2d):
                _fix_attention(new_net, path, layouts[f"{path}.norm"][0], old_cfg.head_channels)
    new_net.train(net.training)
    _verify(net, new_net)
    return new_net


def _verify(old: UNet, new: UNet) -> None:
    cfg = old.config
    p = next(old.parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(2, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g).to(p.device, p.dtype)
    t = torch.rand(2, generator=g).to(p.device, p.dtype)
    y = torch.arange(2, device=p.device) % cfg.num_classes if cfg.num_classes else None
    a, b = copy.deepcopy(old).eval(), copy.deepcopy(new).eval()
    with torch.no_grad():
        out_a, out_b = a(x, t, y), b(x, t, y)
    err = (out_a - out_b).abs().max().item()
    tol = 1e-4 * (1.0 + out_a.abs().max().item()) if p.dtype != torch.float64 else 1e-10
    if not err <= tol:
        raise ValueError(f"widen_unet: the widened network differs from the original by {err:.3g} (tolerance "
                         f"{tol:.3g}); this layout cannot be widened exactly")
