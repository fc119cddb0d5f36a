"""The shared evaluation loop: every image scored once, in order, whatever the worker count."""
import numpy as np
import pytest

from dsrnet.data.images import write_image
from dsrnet.data.imresize import imresize
from dsrnet.data.layouts import find_test_set
from dsrnet.evaluation import evaluate_set, markdown_table
from dsrnet.metrics import psnr_y


@pytest.fixture
def seven_images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(7):
        hr = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        write_image(tmp_path / "HR" / f"im{i}.png", hr)
        write_image(tmp_path / "LR_bicubic" / "X2" / f"im{i}x2.png", imresize(hr, 0.5))
    return find_test_set(tmp_path, 2)


@pytest.mark.parametrize("workers", [1, 2, 4, 16])
def test_every_image_scored_in_order(seven_images, workers, tmp_path):
    r = evaluate_set(lambda lr: imresize(lr, 2), seven_images, "Bicubic", workers=workers,
                     save_dir=tmp_path / "out")
    assert [im.name for im in r.images] == [f"im{i}" for i in range(7)]
    assert r.n_images == 7 and r.shave == 2
    assert r.psnr == pytest.approx(np.mean([im.psnr for im in r.images]))
    assert len(list((tmp_path / "out").glob("*_SR.png"))) == 7
    assert len((tmp_path / "out" / "per_image.csv").read_text().splitlines()) == 8


def test_scores_follow_metrics(seven_images):
    from dsrnet.data.layouts import load_pair

    r = evaluate_set(lambda lr: imresize(lr, 2), seven_images, "Bicubic", shave=3)
    hr, lr = load_pair(seven_images, seven_images.pairs[0])
    assert r.images[0].psnr == pytest.approx(psnr_y(imresize(lr, 2), hr, 3))


def test_upscaler_errors_propagate(seven_images):
    def broken(lr):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        evaluate_set(broken, seven_images, "x")


def test_markdown_table(seven_images):
    a = evaluate_set(lambda lr: imresize(lr, 2), seven_images, "Bicubic")
    table = markdown_table([a])
    assert table.splitlines()[0] == "| dataset | scale | Bicubic |"
    assert f"{a.psnr:.2f} / {a.ssim:.4f}" in table
