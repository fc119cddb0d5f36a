"""Tiled SR equals whole-image SR exactly when the overlap reaches DSRNet's receptive radius, and not below it."""
import pytest
import torch

from dsrnet.data.images import read_image
from model import Net, load_checkpoint
from model.inference import RECEPTIVE_RADIUS, super_resolve


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_receptive_radius_matches_the_network(scale):
    """Perturb one LR pixel: exactly the SR pixels of LR cells within RECEPTIVE_RADIUS change (CPU convs are
    direct, so an unaffected output is bit-identical)."""
    torch.manual_seed(scale)
    net = Net(scale).eval()
    x = torch.rand(1, 3, 45, 45)
    y = x.clone()
    y[0, :, 22, 22] += 0.5
    with torch.no_grad():
        changed = (net(x) - net(y)).abs().amax(dim=(0, 1, 3)).nonzero().flatten() // scale
    assert (22 - changed.min().item(), changed.max().item() - 22) == (RECEPTIVE_RADIUS, RECEPTIVE_RADIUS)


def test_tiles_equal_whole_image_at_the_radius_only(weights_x2, benchmark_dir):
    net = load_checkpoint(weights_x2, device="cpu")
    lr = read_image(benchmark_dir / "Set5" / "image_SRF_2" / "img_002_SRF_2_LR.png")[:70, :70]
    whole = super_resolve(net, lr, 2)
    for overlap in (RECEPTIVE_RADIUS, RECEPTIVE_RADIUS - 1):
        tiled = super_resolve(net, lr, 2, tile=2 * overlap + 16, tile_overlap=overlap)
        assert tiled.shape == whole.shape
        assert torch.equal(tiled, whole) == (overlap == RECEPTIVE_RADIUS), overlap
    coarse = super_resolve(net, lr, 2, tile=36, tile_overlap=10)
    assert float((coarse - whole).abs().max()) > 1e-4  # far below the radius: visibly different
