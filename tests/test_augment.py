"""The domain-shift augmentation: specs, shapes and dtypes, image and mask moved together, seeds."""
import numpy as np
import pytest

from trainer import augment as A


def _disc_sample(h=64, w=80, centre=(30, 44), radius=12):
    """A mucosa-coloured frame whose red channel marks the polyp disc exactly (255 on it, 40 off it)."""
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.uint8)
    img = np.full((h, w, 3), 90, np.uint8)
    img[..., 0] = np.where(mask == 1, 255, 40)
    return img, mask


def test_specs_name_presets_parts_and_groups():
    assert A.parse("flips-rotations") == {"flips", "rotation"}
    assert A.parse("domain-shift") == set(A.PARTS)
    assert A.parse("domain-shift:-photometric,-jpeg") == set(A.PARTS) - set(A.GROUPS["photometric"]) - {"jpeg"}
    assert A.parse("flips-rotations:+scale") == {"flips", "rotation", "zoom_out", "resized_crop"}
    for bad in ("heavy", "domain-shift:blur", "domain-shift:-glare", "flips-rotations:+"):
        with pytest.raises(A.AugmentError):
            A.parse(bad)
    assert "JPEG" not in A.describe("domain-shift:-jpeg") and "JPEG" in A.describe("domain-shift")


@pytest.mark.parametrize("spec", ["flips-rotations", "domain-shift", *(f"flips-rotations:+{p}" for p in A.PARTS)])
def test_shapes_dtypes_and_binary_masks(spec):
    img, mask = _disc_sample()
    for seed in range(6):
        out, m = A.augment(img, mask, np.random.default_rng(seed), A.parse(spec))
        assert out.shape == img.shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
        assert m.shape == mask.shape and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}


def test_geometry_moves_image_and_mask_together():
    """With every geometric part on and no pixel part, the red channel still marks the mask."""
    img, mask = _disc_sample()
    parts = A.parse("flips-rotations:+scale")
    for seed in range(25):
        out, m = A.augment(img, mask, np.random.default_rng(seed), parts)
        red = out[..., 0] > 147  # half-way between the disc's 255 and the surround's 40
        if m.any():
            assert (red & (m == 1)).sum() / (red | (m == 1)).sum() > 0.85, seed
        else:
            assert red.sum() <= 4, seed  # a crop that left the polyp out


def test_zoom_out_only_shrinks_the_polyp():
    img, mask = _disc_sample()
    areas = [A.augment(img, mask, np.random.default_rng(s), frozenset({"zoom_out"}))[1].sum() for s in range(25)]
    assert all(a == mask.sum() or a <= 0.85 * mask.sum() for a in areas)
    assert min(areas) < 0.5 * mask.sum()  # some samples come out as small polyps


def test_seeded_and_ablation_keeps_other_parts_draws():
    img, mask = _disc_sample()
    every = A.parse("domain-shift")
    one = A.augment(img, mask, np.random.default_rng(7), every)
    again = A.augment(img, mask, np.random.default_rng(7), every)
    other = A.augment(img, mask, np.random.default_rng(8), every)
    assert np.array_equal(one[0], again[0]) and np.array_equal(one[1], again[1])
    assert not np.array_equal(one[0], other[0])
    for part in ("jpeg", "noise", "specular", "brightness"):  # a pixel part removed: the geometry is unchanged
        without = A.augment(img, mask, np.random.default_rng(7), every - {part})
        assert np.array_equal(without[1], one[1]), part


def test_input_is_left_unchanged():
    img, mask = _disc_sample()
    before = img.copy(), mask.copy()
    A.augment(img, mask, np.random.default_rng(0), A.parse("domain-shift"))
    assert np.array_equal(img, before[0]) and np.array_equal(mask, before[1])
