"""The synthetic head phantom: seeded, the same anatomy in every contrast, CT in Hounsfield units."""

from __future__ import annotations

import numpy as np
import pytest

from medidiff.phantom import head_phantom

SHAPE = (48, 56, 48)


def test_a_seed_always_draws_the_same_head() -> None:
    np.testing.assert_array_equal(head_phantom(SHAPE, "T1", seed=4), head_phantom(SHAPE, "T1", seed=4))
    assert not np.array_equal(head_phantom(SHAPE, "T1", seed=4), head_phantom(SHAPE, "T1", seed=5))


def test_ct_contrast_is_the_same_head_in_hounsfield_units() -> None:
    t1 = head_phantom(SHAPE, "T1", seed=4)
    ct = head_phantom(SHAPE, "CT", seed=4)
    from scipy.ndimage import binary_erosion

    outside = binary_erosion(t1 == 0, iterations=3)  # beyond the point spread of the edge
    inside = binary_erosion(t1 > 0, iterations=3)
    assert outside.any() and inside.any()
    np.testing.assert_allclose(ct[outside], -1000.0, atol=0.5)  # air around the head
    head = ct[inside]
    assert head.min() > -50.0  # no air inside the head
    assert np.percentile(head, 99) > 900.0  # the skull is bone
    brain = binary_erosion(inside & (t1 > 0.4), iterations=2)  # grey and white matter, away from bone
    assert 20.0 < float(np.median(ct[brain])) < 45.0
    # a few HU of texture, not an MR-style bias field: brain values stay between 10 and 80 HU
    assert np.percentile(ct[brain], 1) > 10.0 and np.percentile(ct[brain], 99) < 80.0


def test_unknown_contrast_is_refused() -> None:
    with pytest.raises(ValueError, match="contrast must be one of"):
        head_phantom(SHAPE, "PD", seed=0)  # type: ignore[arg-type]


def test_ct_training_phantoms_are_head_cts_in_the_ct_scale() -> None:
    """data.synthetic_phantoms with CT: head CTs in HU, normalized as CT scans are ((HU + 1000) / 2000)."""
    from medidiff.data import PatchDataset

    ds = PatchDataset([], "CT", [32, 32, 32], 0.9, seed=0, phantoms=1)
    expected = (head_phantom((96, 112, 96), "CT", seed=1000) + 1000.0) / 2000.0
    volume = np.asarray(ds.volumes[0]["image"])[0]
    assert volume.shape == expected.shape
    np.testing.assert_allclose(np.sort(volume.ravel()), np.sort(expected.ravel()), atol=1e-5)
