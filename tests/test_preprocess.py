import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssd_mnv1 import load_image, preprocess, resize
from ssd_mnv1.preprocess import resize_uint8, tf_nearest_indices


def test_nearest_uses_tf_half_pixel_centres_not_torch_legacy():
    assert tf_nearest_indices(4, 2).tolist() == [1, 3]  # torch legacy 'nearest' would give [0, 2]
    assert tf_nearest_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert tf_nearest_indices(5, 3).tolist() == [0, 2, 4]
    assert tf_nearest_indices(547, 192)[[0, -1]].tolist() == [1, 545]  # floor(0.5*547/192), floor(191.5*547/192)


def test_preprocess_scales_to_minus_one_one_and_is_chw():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, 10:] = 255
    x = preprocess(img, 4)
    assert x.shape == (3, 4, 4) and x.dtype == torch.float32
    assert x[:, :, :2].eq(-1).all() and x[:, :, 2:].eq(1).all()


@pytest.mark.parametrize("shape, size", [((37, 53), 16), ((37, 53), 224), ((480, 640), 224), ((256, 256), 192)])
def test_bilinear_option_matches_tf_half_pixel_bilinear(shape, size):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = resize(img, size, "bilinear")
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(size, size),
                        mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 5e-3  # torch's source grid rounds differently
    tf = pytest.importorskip("tensorflow")
    tf_ref = tf.image.resize(img[None].astype(np.float32), (size, size), method="bilinear", antialias=False)[0]
    assert np.abs(out - tf_ref.numpy()).max() < 1e-4  # TF's own, to float32 rounding


def test_bilinear_pixels_do_not_depend_on_the_torch_thread_count():
    # the training image cache holds these pixels: F.interpolate's differ at 1 and at 2 threads
    img = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(resize_uint8(img, 192, "bilinear"))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(*results)


def test_pil_greyscale_and_rgba_inputs_are_converted_to_rgb():
    grey = Image.fromarray(np.full((8, 8), 128, np.uint8), mode="L")
    rgba = Image.fromarray(np.full((8, 8, 4), 64, np.uint8), mode="RGBA")
    assert preprocess(grey, 4).shape == (3, 4, 4)
    assert torch.allclose(preprocess(rgba, 4), torch.full((3, 4, 4), 64 / 127.5 - 1))


def test_unknown_interpolation_is_named():
    with pytest.raises(ValueError, match="bicubic"):
        resize(np.zeros((4, 4, 3), np.uint8), 2, "bicubic")


@pytest.mark.parametrize("size", [192, 224, 256])
def test_resize_of_test_image_matches_st_up_to_jpeg_decoder(reference_dir, size):
    """Same source pixels as TF's nearest resize; only PIL-vs-TF JPEG decoding differs (measured)."""
    ref = np.load(reference_dir / "test_vectors" / f"ref_outputs_{size}.npz")["input_uint8_hwc"].astype(int)
    img = load_image(reference_dir / "test_vectors" / "people_826x547.jpg")
    ours = resize(img, size).astype(int)
    assert np.abs(ours - ref).mean() < 2.0
    # Every output row and column is closest to the source row/column our index formula picked.
    rows, cols = tf_nearest_indices(img.shape[0], size), tf_nearest_indices(img.shape[1], size)
    src = img.astype(int)
    for i in range(0, size, 7):
        cand = [r for r in (rows[i] - 1, rows[i], rows[i] + 1) if 0 <= r < img.shape[0]]
        errs = [np.abs(src[r][cols] - ref[i]).mean() for r in cand]
        assert cand[int(np.argmin(errs))] == rows[i]


@pytest.mark.parametrize("size", [192, 224, 256])
def test_resize_of_tf_decoded_test_image_equals_st_stored_input_exactly(reference_dir, size):
    """With ST's JPEG decoder (TF, fast IDCT) our resize gives ST's stored input bit for bit; PIL's
    accurate IDCT changes ~70 % of pixels by up to 16 levels (mean 1.5), which is all that differs."""
    pytest.importorskip("tensorflow")

    ref = np.load(reference_dir / "test_vectors" / f"ref_outputs_{size}.npz")["input_uint8_hwc"]
    assert np.array_equal(resize(load_image(reference_dir / "test_vectors" / "people_826x547.jpg", decoder="tf"), size), ref)
