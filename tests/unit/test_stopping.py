"""The plateau rule: when it stops, for metrics minimised and maximised, and its option checks."""
import pytest


@pytest.mark.parametrize("history, window, min_delta, relative, stops_at", [
    ([5.0, 4.0, 3.9, 3.85, 3.84], 2, 0.2, False, 3),  # at 3.85: the last two (3.9, 3.85) beat 4.0 by 0.15 < 0.2
    ([5.0, 4.0, 3.0, 2.0, 1.0], 2, 0.2, False, None),  # still falling by 1 per check
    ([10.0, 8.0, 7.9, 7.8], 2, 0.05, True, 3),  # 8.0 -> 7.8 is 2.5 % < 5 % of 8.0
])
def test_plateau_rule_stops_when_the_last_window_does_not_beat_the_earlier_best(history, window, min_delta,
                                                                                 relative, stops_at):
    from lavis_glscl.stopping import PlateauRule

    rule = PlateauRule(metric="train_loss", window=window, min_delta=min_delta, relative=relative)
    decisions = [rule.update(value) for value in history]
    assert (decisions.index(True) if True in decisions else None) == stops_at


def test_plateau_rule_maximises_metrics_and_checks_its_options():
    from lavis_glscl.stopping import PlateauRule

    rule = PlateauRule(metric="val_agg_metrics", window=1, min_delta=1.0)
    assert [rule.update(v) for v in (10.0, 12.0, 12.5)] == [False, False, True]  # +0.5 < 1 point
    with pytest.raises(ValueError, match="window"):
        PlateauRule(metric="train_loss", window=0)
