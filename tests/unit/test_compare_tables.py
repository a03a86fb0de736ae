"""The comparison tables: the paired test against a baseline row and the markdown table's cells."""
import pytest

from lavis_glscl.compare_tables import markdown_table, paired_difference


def test_paired_difference_needs_two_shared_seeds_and_flags_a_clear_gap():
    def row(values):
        return {"per_seed": [{"seed": s, "metrics": {"r1": v}} for s, v in enumerate(values)]}

    assert paired_difference(row([1.0]), row([2.0]), "r1") is None
    clear = paired_difference(row([10.0, 11.0, 12.0]), row([1.0, 2.2, 2.9]), "r1")
    assert clear["difference"] == pytest.approx((9.0 + 8.8 + 9.1) / 3) and clear["exceeds_spread"]
    noisy = paired_difference(row([3.0, 1.0, 2.0]), row([1.0, 3.0, 2.1]), "r1")
    assert not noisy["exceeds_spread"] and noisy["p"] > 0.5
    table = markdown_table([{"name": "a", "per_seed": [{}, {}], "metrics": {"r1": 2.0}, "std": {"r1": 0.5},
                             "steps": 120.0, "minutes": 3.25, "cpu_minutes": 5.5}], ["r1"])
    assert table.splitlines()[-1] == "| a | 2 | 2.0 ± 0.5 | 120 | 3.2 | 5.5 |"
