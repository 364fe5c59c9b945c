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
    outside = t1 == 0
    assert outside.any() and (~outside).any()
    assert np.all(ct[outside] == -1000.0)  # air around the head, exactly
    head = ct[~outside]
    assert head.min() > -50.0  # no air inside the head
    assert np.percentile(head, 99) > 900.0  # the skull is bone
    brain = (t1 > 0.4) & (t1 < 0.95) & (ct < 100.0)  # grey and white matter in T1
    assert 20.0 < float(np.median(ct[brain])) < 45.0
    # a few HU of texture, not an MR-style bias field: brain values stay within 15 HU of their class
    assert np.percentile(ct[brain], 1) > 10.0 and np.percentile(ct[brain], 99) < 80.0


def test_unknown_contrast_is_refused() -> None:
    with pytest.raises(ValueError, match="contrast must be one of"):
        head_phantom(SHAPE, "PD", seed=0)  # type: ignore[arg-type]
