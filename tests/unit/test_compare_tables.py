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


def record(seed, metrics, steps=None, minutes=1.0, cpu_minutes=2.0):
    return {"seed": seed, "metrics": metrics, "steps": steps, "minutes": minutes, "cpu_minutes": cpu_minutes}


def test_summarise_gives_each_metrics_mean_and_sample_std_over_the_seeds_reporting_it():
    """r1 over 10, 12, 11: mean 11, sample std sqrt(((-1)^2 + 1^2 + 0^2) / 2) = 1; r5 reported by two seeds, 50 and
    54: mean 52, std sqrt((4 + 4) / 1) = sqrt(8); steps of the seeds that report them, (100 + 120) / 2; minutes and CPU
    minutes averaged; one seed has std 0."""
    from lavis_glscl.compare_tables import summarise

    row = summarise("run", [record(0, {"r1": 10.0, "r5": 50.0}, steps=100, minutes=1.0, cpu_minutes=2.0),
                            record(1, {"r1": 12.0}, minutes=2.0, cpu_minutes=4.0),
                            record(2, {"r1": 11.0, "r5": 54.0}, steps=120, minutes=3.0, cpu_minutes=9.0)])
    assert row["seeds"] == [0, 1, 2] and row["name"] == "run"
    assert row["metrics"] == pytest.approx({"r1": 11.0, "r5": 52.0}, abs=1e-12)
    assert row["std"] == pytest.approx({"r1": 1.0, "r5": 8 ** 0.5}, abs=1e-12)
    assert (row["steps"], row["minutes"], row["cpu_minutes"]) == pytest.approx((110.0, 2.0, 5.0), abs=1e-12)
    assert summarise("one", [record(3, {"r1": 7.0})])["std"] == {"r1": 0.0}


def test_paired_difference_pairs_by_seed_and_gives_mean_sd_and_two_sided_t_test_p_by_hand():
    """Seeds paired by id, not by position (listed in other orders; a seed only one side has left out): differences
    0.5, 2.0, 2.0, mean 1.5, sample sd sqrt(0.75), t = 1.5 / (sd / sqrt(3)) = 3 with 2 degrees of freedom, whose
    two-sided p is 1 - |t| / sqrt(2 + t^2) = 1 - 3 / sqrt(11) (the t distribution with 2 degrees of freedom in closed
    form): 0.0955, not below 0.05.  Differences 1.0, 1.2, 1.1: t = 1.1 / (0.1 / sqrt(3)), p below 0.05."""
    def row(values):
        return {"per_seed": [{"seed": seed, "metrics": {"r1": value}} for seed, value in values.items()]}

    ours = row({1: 12.0, 0: 10.0, 5: 99.0, 2: 11.0})
    theirs = row({2: 9.0, 0: 9.5, 7: 0.0, 1: 10.0})
    test = paired_difference(ours, theirs, "r1")
    assert test["seeds"] == 3
    assert test["difference"] == pytest.approx(1.5, abs=1e-12)
    assert test["sd"] == pytest.approx(0.75 ** 0.5, abs=1e-12)
    assert test["p"] == pytest.approx(1 - 3 / 11 ** 0.5, abs=1e-9)
    assert not test["exceeds_spread"]
    clear = paired_difference(row({0: 11.0, 1: 12.2, 2: 13.1}), row({0: 10.0, 1: 11.0, 2: 12.0}), "r1")
    t = 1.1 / (0.1 / 3 ** 0.5)
    assert clear["difference"] == pytest.approx(1.1, abs=1e-12) and clear["sd"] == pytest.approx(0.1, abs=1e-9)
    assert clear["p"] == pytest.approx(1 - t / (2 + t * t) ** 0.5, rel=1e-6) and clear["exceeds_spread"]


def test_paired_difference_with_identical_differences_has_p_0_or_1_and_matches_scipy_otherwise():
    """No spread: the same gap on every seed gives p 0 (the gap exceeds a zero spread), no gap p 1.  Four seeds
    (3 degrees of freedom) against scipy's t distribution, from the mean and sd of the differences."""
    from scipy import stats

    def row(values):
        return {"per_seed": [{"seed": seed, "metrics": {"r1": value}} for seed, value in enumerate(values)]}

    same_gap = paired_difference(row([3.0, 4.0, 5.0]), row([1.0, 2.0, 3.0]), "r1")
    assert (same_gap["difference"], same_gap["sd"], same_gap["p"], same_gap["exceeds_spread"]) == (2.0, 0.0, 0.0, True)
    no_gap = paired_difference(row([3.0, 4.0]), row([3.0, 4.0]), "r1")
    assert (no_gap["p"], no_gap["exceeds_spread"]) == (1.0, False)
    differences = [0.4, -0.1, 0.9, 0.6]
    test = paired_difference(row([5.0 + d for d in differences]), row([5.0] * 4), "r1")
    mean = sum(differences) / 4
    sd = (sum((d - mean) ** 2 for d in differences) / 3) ** 0.5
    assert test["p"] == pytest.approx(2 * stats.t.sf(mean / (sd / 2), df=3), rel=1e-9)


def test_the_paired_table_leaves_out_a_row_without_two_shared_seeds():
    from lavis_glscl.compare_tables import paired_table

    test = {"difference": 2.0, "sd": 1.0, "p": 0.2, "exceeds_spread": False}
    rows = [{"name": "new", "baseline": "base", "paired": {"r5": test}},
            {"name": "one seed", "baseline": "base", "paired": {"r5": None}}, {"name": "base"}]
    assert paired_table(rows, ["r5"]).splitlines()[2:] == ["| new - base | +2.0 ± 1.0 (p 0.20) |"]
    assert paired_table(rows[1:], ["r5"]) == ""
