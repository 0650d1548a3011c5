"""Image metrics: PSNR / SSIM closed forms, masks, the reference SSIM (neus2cli.eval.images)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neus2cli.eval.images import evaluate_images, lpips, lpips_available, psnr, ssim, ssim_map


def image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth-plus-noise RGB image in [0.1, 0.9] (room for offsets without clipping)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.2 * np.sin(6 * xx + 3 * yy)[..., None] * np.array([1.0, 0.7, -0.5])
    return np.clip(base + 0.1 * rng.uniform(-1, 1, size=(h, w, 3)), 0.1, 0.9)


def test_ssim_of_an_image_with_itself_is_one():
    x = image()
    # num == den term by term, so the map is 1 up to rounding.
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert psnr(x, x) == math.inf


@pytest.mark.parametrize("d", [0.01, 0.05, 0.1])
def test_psnr_of_a_constant_offset(d):
    x = image()
    # MSE = d^2 exactly, so PSNR = -10 log10(d^2).
    assert psnr(x + d, x) == pytest.approx(-10 * math.log10(d**2), abs=1e-9)


def test_ssim_of_a_constant_offset_on_flat_images():
    a, d = 0.4, 0.1
    gt = np.full((32, 32, 3), a)
    # Flat images: zero variances and covariance, so the contrast-structure factor is C2 / C2 = 1
    # and SSIM is the luminance term (2 a (a + d) + C1) / (a^2 + (a + d)^2 + C1), C1 = 0.01^2.
    c1 = 0.01**2
    expected = (2 * a * (a + d) + c1) / (a**2 + (a + d) ** 2 + c1)
    assert ssim(gt + d, gt) == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_the_reference_implementation():
    from skimage.metrics import structural_similarity

    x, y = image(seed=0), image(seed=1)
    # scikit-image with Wang et al.'s settings: Gaussian 11x11 (truncate 3.5 -> radius 5),
    # sigma 1.5, population covariances, border of 5 cropped, mean over channels.
    ref = structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    assert ssim(x, y) == pytest.approx(ref, abs=1e-10)  # same float64 sums in another order


def test_masked_versus_whole_image():
    gt = image()
    pred = gt.copy()
    pred[:, 40:] += 0.1  # change only the right part
    mask = np.zeros(gt.shape[:2], dtype=bool)
    mask[:, :30] = True  # score only the left part: > 5 pixels (the SSIM window radius) away

    # Inside the mask nothing changed.
    assert psnr(pred, gt, mask) == math.inf
    assert ssim(pred, gt, mask) == pytest.approx(1.0, abs=1e-12)
    # Whole image: MSE = (fraction changed) * 0.1^2.
    frac = 24 / 64
    assert psnr(pred, gt) == pytest.approx(-10 * math.log10(frac * 0.01), abs=1e-9)
    assert ssim(pred, gt) < 0.99
    # The inverted mask holds columns 30..63: 24 changed and 10 unchanged, MSE = 24/34 * 0.1^2.
    assert psnr(pred, gt, ~mask) == pytest.approx(-10 * math.log10(24 / 34 * 0.01), abs=1e-9)


def test_masked_ssim_is_the_masked_mean_of_the_map():
    x, y = image(seed=0), image(seed=2)
    mask = np.random.default_rng(0).uniform(size=x.shape[:2]) > 0.5
    smap = ssim_map(x, y)
    assert smap.shape == (x.shape[0] - 10, x.shape[1] - 10)
    assert ssim(x, y, mask) == pytest.approx(smap[mask[5:-5, 5:-5]].mean(), abs=1e-15)
    assert math.isnan(ssim(x, y, np.zeros(x.shape[:2], bool)))


def test_torch_and_numpy_inputs_agree():
    x, y = image(seed=0), image(seed=3)
    mask = np.ones(x.shape[:2], bool)
    tx, ty = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    # float32 tensors: values rounded at ~1e-8 relative.
    assert psnr(tx, ty, torch.from_numpy(mask)) == pytest.approx(psnr(x, y, mask), abs=1e-5)
    assert ssim(tx, ty) == pytest.approx(ssim(x, y), abs=1e-6)


def test_lpips_is_optional():
    if lpips_available():
        pytest.skip("the lpips package is installed here")
    assert lpips(image(), image(seed=1)) is None


def test_evaluate_images_per_view_and_mean():
    gts = [image(seed=i) for i in range(3)]
    offsets = [0.01, 0.02, 0.04]
    preds = [g + d for g, d in zip(gts, offsets, strict=True)]
    masks = [np.ones(g.shape[:2], bool) for g in gts]
    out = evaluate_images(preds, gts, masks, names=["a", "b", "c"])
    assert out["n_views"] == 3 and [v["name"] for v in out["views"]] == ["a", "b", "c"]
    expected = [-10 * math.log10(d**2) for d in offsets]
    for view, e in zip(out["views"], expected, strict=True):
        assert view["psnr"] == pytest.approx(e, abs=1e-9)
        assert view["psnr_masked"] == pytest.approx(e, abs=1e-9)  # full mask == whole image
        assert view["ssim_masked"] == pytest.approx(view["ssim"], abs=1e-12)
        assert view["lpips"] is None or not lpips_available()
    # The mean is over views (the NeRF convention), not the PSNR of the pooled MSE.
    assert out["mean"]["psnr"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert set(out["mean"]) == {"psnr", "ssim", "lpips", "psnr_masked", "ssim_masked"}
    no_mask = evaluate_images(preds, gts)
    assert no_mask["views"][0]["psnr_masked"] is None and no_mask["mean"]["ssim_masked"] is None


def test_input_validation():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="mask"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="same length"):
        evaluate_images([np.zeros((16, 16, 3))], [])
