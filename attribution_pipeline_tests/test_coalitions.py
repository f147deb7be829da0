import re

import numpy as np
import pytest

from attribution_pipeline.coalitions import (
    EMPTY_KEY, coalition_key, coalitions_to_masks, make_coalition, masks_to_coalitions,
)


def test_keys_are_short_safe_and_order_independent():
    k = coalition_key(["b", "a", "c"])
    assert k == coalition_key(["c", "b", "a"]) == coalition_key(["a", "a", "b", "c"])
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,20}", k)
    assert coalition_key([]) == EMPTY_KEY
    assert coalition_key(["a", "b"]) != coalition_key(["a", "c"])


def test_masks_round_trip_and_kinds():
    ids = ["a", "b", "c"]
    masks = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=bool)
    cs = masks_to_coalitions(masks, ids)
    assert [c.members for c in cs] == [("a", "c"), ("a", "b", "c"), ("b",)]
    assert [c.kind for c in cs] == ["sampled", "full", "sampled"]
    np.testing.assert_array_equal(coalitions_to_masks([c.members for c in cs], ids), masks)
    with pytest.raises(ValueError, match="not a current contributor"):
        coalitions_to_masks([["z"]], ids)
    assert make_coalition(["b", "a"], "sampled", 3).as_row()["members"] == ["a", "b"]
