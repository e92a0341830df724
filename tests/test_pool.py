"""PoolFormer's pooling mixer against its formula written out (MetaFormer, Yu et al. 2022, and
sail-sg/poolformer's ``Pooling``: ``AvgPool2d(3, 1, 1, count_include_pad=False)(x) - x``)."""
import torch

from archbench import build_model, create_model
from archbench.grammar import load_parts
from archbench.registry import MIXERS


def reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each position: the mean over the k x k window's positions inside the map, minus itself."""
    B, C, H, W = x.shape
    out = torch.empty_like(x)
    r = k // 2
    for i in range(H):
        for j in range(W):
            win = x[:, :, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1]
            out[:, :, i, j] = win.mean(dim=(2, 3)) - x[:, :, i, j]
    return out


def test_pool_is_average_pooling_minus_identity():
    load_parts()
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 7)
    for k in (3, 5):
        m = MIXERS.get("pool")(4, heads=1, grid=(5, 7), pool_size=k)
        assert torch.allclose(m(x), reference(x, k), atol=1e-6)
    assert sum(p.numel() for p in m.parameters()) == 0


def test_pool_in_its_home_and_in_a_published_model():
    model = build_model(mixer="pool", img_size=32, num_classes=3)
    assert model.spec.macro == "pyramid"
    shift = create_model("shiftvit_tiny_light", img_size=32, num_classes=3)
    pool = create_model("shiftvit_tiny_light", mixer="pool", img_size=32, num_classes=3)
    # the shift has no parameters; pool's pre-norm residual branch adds a norm and layer scale per block
    assert sum(p.numel() for p in pool.parameters()) > sum(p.numel() for p in shift.parameters())
    assert pool(torch.randn(1, 3, 32, 32)).shape == (1, 3)
