"""The glscl_retrieval task's additions to LAVIS's retrieval metrics."""
import numpy as np
import pytest

from lavis_glscl.tasks import pair_accuracy


def test_pair_accuracy_counts_both_choices_of_each_pair_in_each_direction():
    # items 0/1 form a pair with captions 0/1; items 2/3 with captions 3/2
    img2txt = {0: [0], 1: [1], 2: [3], 3: [2]}
    i2t = np.array([[0.9, 0.1, 0, 0],   # item 0 prefers its caption 0: right
                    [0.8, 0.2, 0, 0],   # item 1 prefers caption 0 over its own 1: wrong
                    [0, 0, 0.3, 0.7],   # item 2 prefers its caption 3: right
                    [0, 0, 0.6, 0.4]])  # item 3 prefers its caption 2: right
    t2i = np.array([[0.5, 0.4, 0, 0],   # caption 0 prefers item 0: right
                    [0.5, 0.4, 0, 0],   # caption 1 prefers item 0 over its item 1: wrong
                    [0, 0, 0.1, 0.2],   # caption 2 prefers item 3: right
                    [0, 0, 0.1, 0.2]])  # caption 3 prefers item 3 over its item 2: wrong
    result = pair_accuracy(i2t, t2i, [[0, 1], [2, 3]], img2txt)
    assert result == pytest.approx({"pair_accuracy_i2t": 75.0, "pair_accuracy_t2i": 50.0, "pair_accuracy": 62.5})
