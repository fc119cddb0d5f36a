"""``sample.py --input``: own photos come out as they went in (upright, gray, 16-bit, still images only), and
--output/--report write what their names say."""
from __future__ import annotations

import io
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import sample
from dsrnet.data.images import image_size, png16, read_planes, upright, write_image
from dsrnet.data.imresize import imresize
from dsrnet.errors import InputError
from dsrnet.metrics import luma, to_uint16
from model import load_checkpoint
from model.inference import super_resolve

RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8)  # 8 rows, 12 columns: landscape as stored


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _bicubic(*args: str) -> None:
    sample.main(["--bicubic", "--scale", "2", *args])


# --------------------------------------------------------------------------- 11: EXIF orientation

def test_a_phone_portrait_jpeg_is_upscaled_upright(tmp_path):
    """Orientation 6 ("rotate 90 clockwise"): viewers show the 8x12 stored pixels as a 12-row portrait."""
    src = tmp_path / "portrait.jpg"
    Image.fromarray(PHOTO).save(src, quality=95, exif=_exif(6))
    with Image.open(src) as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert shown.shape == (12, 8, 3)
    assert image_size(src) == (8, 12)  # (width, height) as shown, from the header
    np.testing.assert_array_equal(read_planes(src).rgb, shown)
    _bicubic("--input", str(src), "--output", str(tmp_path / "sr.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sr.png")), imresize(shown, 2))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillows_exif_transpose(tmp_path, orientation):
    for name, pixels in (("rgb.png", PHOTO), ("gray16.png", RNG.integers(0, 65536, (8, 12), dtype=np.uint16))):
        Image.fromarray(pixels).save(tmp_path / name, exif=_exif(orientation))
        with Image.open(tmp_path / name) as im:
            want = np.asarray(ImageOps.exif_transpose(im))
        got = read_planes(tmp_path / name, keep_depth=True)
        np.testing.assert_array_equal(got.rgb if pixels.ndim == 3 else got.rgb[..., 0], want)
        np.testing.assert_array_equal(upright(pixels, orientation), want)


# --------------------------------------------------------------------------- 12: gray and 16 bits

@pytest.mark.parametrize("lossless", [True, False])
def test_a_gray_webp_comes_out_gray(tmp_path, lossless):
    """WebP has no gray mode: Pillow stores L as RGB and reads RGB back, equal channels (lossy: within one)."""
    gray = RNG.integers(0, 256, (8, 12), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.webp", lossless=lossless, quality=90)
    Image.fromarray(PHOTO).save(tmp_path / "colour.webp", lossless=True)
    assert read_planes(tmp_path / "g.webp").gray and not read_planes(tmp_path / "colour.webp").gray
    _bicubic("--input", str(tmp_path / "g.webp"), "--output", str(tmp_path / "g_sr.png"))
    with Image.open(tmp_path / "g_sr.png") as im:
        assert im.mode == "L" and im.size == (24, 16)


@pytest.mark.parametrize("shape", [(8, 12), (8, 12, 2), (8, 12, 3), (8, 12, 4)])
def test_16bit_png_comes_out_16bit(tmp_path, shape):
    """Gray, gray+alpha, RGB, RGBA: the SR and alpha are computed and written at 16 bits (bicubic: MATLAB's
    imresize of uint16 data, exactly)."""
    pixels = RNG.integers(0, 65536, shape, dtype=np.uint16)
    (tmp_path / "in.png").write_bytes(png16(pixels))
    _bicubic("--input", str(tmp_path / "in.png"), "--output", str(tmp_path / "out.png"))
    out = read_planes(tmp_path / "out.png", keep_depth=True)
    channels = 1 if len(shape) == 2 else shape[2]
    colour = pixels if channels in (1, 3) else pixels[..., :-1]
    assert out.rgb.dtype == np.uint16 and out.gray == (channels <= 2) and (out.alpha is None) == (channels in (1, 3))
    np.testing.assert_array_equal(out.rgb if channels >= 3 else out.rgb[..., 0], imresize(colour.squeeze(), 2))
    if out.alpha is not None:
        np.testing.assert_array_equal(out.alpha, imresize(pixels[..., -1], 2))


def test_16bit_gray_alpha_keeps_its_precision_through_the_network(weights_x2, tmp_path):
    """The net sees all 16 bits: an offset of 100/65535 (below an 8-bit level) changes the SR; the 16-bit
    output agrees with the 8-bit path to within one 8-bit level and holds values between 8-bit levels."""
    gray8, alpha8 = RNG.integers(0, 255, (12, 16), dtype=np.uint8), RNG.integers(0, 256, (12, 16), dtype=np.uint8)
    Image.fromarray(np.dstack([gray8, alpha8])).save(tmp_path / "la8.png")
    exact = np.dstack([gray8, alpha8]).astype(np.uint16) * 257
    (tmp_path / "la16.png").write_bytes(png16(exact))
    (tmp_path / "la16_offset.png").write_bytes(png16(exact + np.array([100, 0], np.uint16)))
    for name in ("la8", "la16", "la16_offset"):
        sample.main(["--ckpt_path", str(weights_x2), "--input", str(tmp_path / f"{name}.png"),
                     "--output", str(tmp_path / f"{name}_sr.png")])
    with Image.open(tmp_path / "la16_sr.png") as im:
        assert "LA;16B" in str(im.tile[0].args)  # 16-bit gray + alpha, as Pillow names its raw mode
    raw = cv2.imread(str(tmp_path / "la16_sr.png"), cv2.IMREAD_UNCHANGED)  # gray replicated into B, G, R
    assert raw.dtype == np.uint16 and raw.shape == (24, 32, 4)
    sr16, alpha16 = raw[..., 0], raw[..., 3]
    sr8 = np.asarray(Image.open(tmp_path / "la8_sr.png"))
    assert np.abs(sr16 / 257 - sr8[..., 0]).max() < 1
    inside = (sr16 > 0) & (sr16 < 65535)  # random pixels overshoot: clipped ones are 8-bit levels too
    assert inside.mean() > 0.5 and (sr16[inside] % 257 != 0).mean() > 0.9
    np.testing.assert_array_equal(alpha16, imresize(exact[..., 1], 2))
    net = load_checkpoint(weights_x2)
    want = to_uint16(luma(super_resolve(net, np.repeat(exact[..., :1], 3, axis=2), 2)))[..., 0]
    np.testing.assert_array_equal(sr16, want)
    offset = cv2.imread(str(tmp_path / "la16_offset_sr.png"), cv2.IMREAD_UNCHANGED)[..., 0]
    assert (offset != sr16).mean() > 0.5


# --------------------------------------------------------------------------- 13: animations

@pytest.mark.parametrize("fmt", ["png", "gif", "webp"])
def test_an_animation_is_refused_not_cut_to_its_first_frame(tmp_path, fmt):
    src = tmp_path / f"anim.{fmt}"
    Image.fromarray(PHOTO).save(src, save_all=True, append_images=[Image.fromarray(255 - PHOTO)])
    with pytest.raises(InputError, match=r"anim\.\w+ holds 2 frames .*save the one frame you want"):
        read_planes(src)
    if fmt == "gif":
        return  # --input takes no GIF at all
    with pytest.raises(InputError, match="holds 2 frames"):
        _bicubic("--input", str(src), "--output", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_multi_picture_jpeg_is_its_main_picture(tmp_path):
    """Phones save MPO JPEGs (the photo, then previews or depth maps): not an animation."""
    Image.fromarray(PHOTO).save(tmp_path / "phone.jpg", format="MPO", quality=95, save_all=True,
                                append_images=[Image.fromarray(255 - PHOTO)])
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
        main = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_planes(tmp_path / "phone.jpg").rgb, main)


# --------------------------------------------------------------------------- 14: --report's extension

@pytest.fixture
def tiny_set(tmp_path):
    root = tmp_path / "Tiny"
    for k in range(2):
        hr = RNG.integers(0, 256, (24, 28, 3), dtype=np.uint8)
        write_image(root / "HR" / f"{k}.png", hr)
        write_image(root / "LR_bicubic" / "X2" / f"{k}x2.png", imresize(hr, 0.5))
    return root


def test_report_extension_decides_the_format(tiny_set, tmp_path):
    """--report r.md used to write the JSON into r.md and then the markdown over it; now each goes where its
    name says, and the same three files come out whichever of the two is named."""
    args = ["--bicubic", "--scale", "2", "--test_data_dir", str(tiny_set), "--no_save", "--quiet", "--report"]
    sample.main([*args, str(tmp_path / "r.md")])
    sample.main([*args, str(tmp_path / "j.json")])
    for stem in ("r", "j"):
        doc = json.loads((tmp_path / f"{stem}.json").read_text())
        assert doc["results"][0]["method"] == "Bicubic"
        assert (tmp_path / f"{stem}.md").read_text().startswith("|")
        assert (tmp_path / f"{stem}_per_image.csv").is_file()
    for name in ("r.txt", "r"):
        with pytest.raises(InputError, match=rf"--report \S*{name}: name a \.json file .* or a \.md file"):
            sample.main([*args, str(tmp_path / "other" / name)])
    assert not (tmp_path / "other").exists()


# --------------------------------------------------------------------------- 15: --output as it reads

def test_output_is_what_it_reads(tmp_path, monkeypatch):
    Image.fromarray(PHOTO).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="--output '' names no place"):
        _bicubic("--input", "a.png", "--output", "")
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
    _bicubic("--input", "a.png", "--output", "x.png/")  # a slash: a folder, whatever the name
    assert (tmp_path / "x.png").is_dir() and (tmp_path / "x.png" / "a_x2_SR.png").is_file()
    protected = tmp_path / "kept.png"
    protected.write_bytes(b"the user's own file")
    protected.chmod(0o444)
    with pytest.raises(InputError, match=r"kept\.png exists and is read-only"):
        _bicubic("--input", "a.png", "--output", "kept.png")
    assert protected.read_bytes() == b"the user's own file"
    protected.chmod(0o644)
    _bicubic("--input", "a.png", "--output", "kept.png")
    assert np.asarray(Image.open(protected)).shape == (16, 24, 3)


def test_png16_is_a_valid_png():
    """Pillow and OpenCV both read the hand-built 16-bit PNG back exactly."""
    gray = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    with Image.open(io.BytesIO(png16(gray))) as im:
        im.verify()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png16(gray)))), gray)
    rgba = RNG.integers(0, 65536, (5, 7, 4), dtype=np.uint16)
    decoded = cv2.imdecode(np.frombuffer(png16(rgba), np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[..., [2, 1, 0, 3]], rgba)
