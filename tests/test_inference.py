"""model.inference.super_resolve: overlapping tiles equal whole-image inference, and the x8 self-ensemble
really uses and undoes all eight flips/rotations.

Random-weight nets stand in for trained ones. PyTorch's default initialisation shrinks activations
layer by layer, so a pixel 17 convolutions away would change the output by less than float rounding and
no tiling error could show; the nets here are re-initialised to keep their activations' scale (He
normal) with the 3x3 kernels' outer ring weighted up, so that the far edge of the receptive field
moves the output ~50x more than float32 rounding does.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import Net
from model.inference import RECEPTIVE_RADIUS, super_resolve

EXACT = 1e-5  # float32: windows and the whole image run different conv kernels, so not bit-equal


def far_reaching(net: Net, seed: int = 0) -> Net:
    g = torch.Generator().manual_seed(seed)
    ring = torch.ones(3, 3)
    ring[1, 1] = 0.5
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 4 and p.requires_grad:
                w = torch.randn(p.shape, generator=g) * (2 / p[0].numel()) ** 0.5
                p.copy_(w * ring / ring.square().mean().sqrt() if p.shape[-1] == 3 else w)
        net.construction.conv17.weight.mul_(0.25)  # outputs of order 1, as an image's
    return net.eval()


@pytest.fixture(scope="module")
def nets() -> dict[int, Net]:
    return {s: far_reaching(Net(scale=s), seed=s) for s in (2, 3, 4)} | {0: far_reaching(Net(multi_scale=True))}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def tiled(net: Net, lr: np.ndarray, scale: int, tile: int, overlap: int) -> tuple[torch.Tensor, list[tuple]]:
    """super_resolve in tiles, and the shape of every batch of windows the net was run on."""
    seen: list[tuple[int, ...]] = []
    hook = net.residual_enhancement.conv1.register_forward_pre_hook(lambda _, inp: seen.append(tuple(inp[0].shape)))
    try:
        return super_resolve(net, lr, scale, tile=tile, tile_overlap=overlap), seen
    finally:
        hook.remove()


R = RECEPTIVE_RADIUS  # 18: the sizes below are written around it
TILE = 2 * R + 2  # the smallest window with room for both overlaps and a step of 2


@pytest.mark.parametrize("held, scale, extra, batches", [
    (2, 2, 2, [4, 2]), (3, 3, 0, [4]), (4, 4, 0, [4]), (0, 2, 0, [4]), (0, 3, 0, [4]), (0, 4, 0, [4]),
], ids=["x2", "x3", "x4", "multi-x2", "multi-x3", "multi-x4"])
def test_tiles_in_both_axes_equal_the_whole_image(nets, held, scale, extra, batches):
    """Windows of 38 with overlap 18 on an odd-sized image one pixel taller than a window: two windows down
    (rows 0, 1), and two across (39 wide) or three (41 wide: columns 0, 2 and 3, the last one shifted to end on
    the border; 6 windows, run as 4 + 2)."""
    h, w = TILE + 1, TILE + 1 + extra
    net, lr = nets[held], _image(h, w, seed=scale)
    whole = super_resolve(net, lr, scale)
    out, seen = tiled(net, lr, scale, TILE, R)
    assert seen == [(n, 3, TILE, TILE) for n in batches]
    assert out.shape == whole.shape == (3, h * scale, w * scale)
    assert (out - whole).abs().max().item() <= EXACT


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_receptive_radius_from_both_sides(nets, scale):
    """Two windows across, one down: overlap = radius gives the whole-image result, one pixel less does not."""
    h, w = 2 * R - 1, 2 * R + 2
    net, lr = nets[scale], _image(h, w, seed=10 + scale)
    whole = super_resolve(net, lr, scale)
    errors = {}
    for overlap in (R, R - 1):
        tile = 2 * overlap + (1 if overlap == R else 2)
        out, seen = tiled(net, lr, scale, tile, overlap)
        errors[overlap] = (out - whole).abs().max().item()
        assert seen == [(2, 3, h, tile)]
    assert errors[R] <= EXACT
    assert errors[R - 1] > EXACT, errors  # ~5e-5 here: the far pixel still counts


# ------------------------------------------------------------------------------------------ self-ensemble

def _dihedral_images(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a NCHW tensor, written independently of model.inference."""
    return [torch.rot90(t, r, dims=(2, 3)) for t in (x, x.flip(3)) for r in range(4)]


class Symmetric(nn.Module):
    """A blur with a kernel that every flip and transpose leaves unchanged, then nearest upsampling:
    it commutes with all eight transforms, so its self-ensemble is its plain output."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        self.kernel = nn.Parameter(k.expand(3, 1, 3, 3).clone())
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        self.inputs.append(x.clone())
        return F.interpolate(F.conv2d(x, self.kernel, padding=1, groups=3), scale_factor=scale, mode="nearest")


class Marked(nn.Module):
    """Nearest upsampling that adds 1 at output pixel (0, 1). Undone, each transform carries that mark to a
    different one of eight pixels, so the ensemble has 1/8 at each, and a lost or repeated transform shows."""

    def __init__(self):
        super().__init__()
        self.mark = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        y = F.interpolate(x, scale_factor=scale, mode="nearest")
        y[:, :, 0, 1] += self.mark
        return y


def test_self_ensemble_runs_all_eight_transforms_and_undoes_them():
    lr = _image(9, 13, seed=1)
    net = Symmetric()
    plain = super_resolve(net, lr, 2)
    net.inputs.clear()
    ensemble = super_resolve(net, lr, 2, self_ensemble=True)
    assert (ensemble - plain).abs().max().item() <= 1e-6
    x = torch.from_numpy(lr).permute(2, 0, 1).unsqueeze(0).float() / 255
    expected = _dihedral_images(x)
    assert len(net.inputs) == 8
    for want in expected:  # each transform exactly once
        assert sum(got.shape == want.shape and torch.equal(got, want) for got in net.inputs) == 1


def test_self_ensemble_averages_each_transform_once():
    lr = _image(5, 7, seed=2)
    h, w = 10, 14
    ensemble = super_resolve(Marked(), lr, 2, self_ensemble=True)
    x = torch.from_numpy(lr).permute(2, 0, 1).float() / 255
    expected = x.repeat_interleave(2, 1).repeat_interleave(2, 2)
    for y, x_ in [(0, 1), (0, w - 2), (h - 1, 1), (h - 1, w - 2), (1, 0), (1, w - 1), (h - 2, 0), (h - 2, w - 1)]:
        expected[:, y, x_] += 1 / 8
    assert (ensemble - expected).abs().max().item() <= 1e-6
