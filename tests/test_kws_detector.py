"""Streaming detector post-processing and the FRR / false-alarm metrics."""
import numpy as np
import pytest

from kws.detector import PosteriorDetector, count_firings, smooth_scores, target_indices
from kws.metrics import classification_report, det_curve, frr_at_fa


def test_targets_skip_background_classes():
    assert target_indices(["_silence_", "_unknown_", "yes", "no"]) == [2, 3]
    assert target_indices(["_background_", "computer"]) == [1]
    with pytest.raises(ValueError):
        PosteriorDetector(["_background_"])


def test_threshold_smoothing_and_refractory():
    det = PosteriorDetector(["_background_", "kw"], threshold=0.5, smooth_hops=2, refractory_hops=3)
    kw = [0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0]
    fired = [det.push(np.array([1 - p, p]), t * 0.1) for t, p in enumerate(kw)]
    # smoothed: 0, .45, .9 (fires at hop 2), refractory hops 3-5, fires again at hop 6
    assert [i for i, d in enumerate(fired) if d is not None] == [2, 6]
    assert fired[2].label == "kw" and fired[2].score == pytest.approx(0.9)
    assert fired[2].time_s == pytest.approx(0.2)


def test_vectorised_firings_equal_the_streaming_detector():
    rng = np.random.default_rng(0)
    probs = rng.random((400, 3)) ** 4
    probs /= probs.sum(axis=1, keepdims=True)
    labels = ["_unknown_", "a", "b"]
    for thr, smooth, refr in [(0.3, 1, 0), (0.5, 3, 5), (0.7, 2, 10)]:
        det = PosteriorDetector(labels, threshold=thr, smooth_hops=smooth, refractory_hops=refr)
        streamed = sum(det.push(p, i) is not None for i, p in enumerate(probs))
        best = smooth_scores(probs[:, 1:], smooth).max(axis=1)
        assert count_firings(best, thr, refr) == streamed
        assert streamed > 0


def test_frr_at_false_alarms_per_hour():
    pos = np.array([0.95, 0.9, 0.8, 0.6, 0.2])
    neg = [np.array([0.1, 0.7, 0.1, 0.1, 0.85, 0.1])]  # two peaks: 0.7 and 0.85
    curve = det_curve(pos, neg, negative_hours=2.0, refractory_hops=0)
    # 0.5 FA/h over 2 h allows one false alarm: threshold just above 0.7 -> FRR 2/5
    assert frr_at_fa(curve, 0.5)["frr"] == pytest.approx(0.4)
    assert frr_at_fa(curve, 0.5)["false_alarms"] == 1
    # 1 FA/h allows both: threshold down to 0.2 -> FRR 0
    assert frr_at_fa(curve, 1.0)["frr"] == pytest.approx(0.0)
    # no false alarm at all: threshold above 0.85 -> only 0.95 and 0.9 pass
    assert frr_at_fa(curve, 0.0)["frr"] == pytest.approx(0.6)
    assert np.all(np.diff(curve["frr"]) >= 0)  # FRR grows with the threshold


def test_classification_report_counts():
    probs = np.eye(3)[[0, 1, 2, 2, 1]]
    rep = classification_report(probs, np.array([0, 1, 2, 1, 1]), ["x", "y", "z"])
    assert rep["accuracy"] == pytest.approx(0.8)
    assert rep["per_class_accuracy"]["y"] == pytest.approx(2 / 3)
    assert rep["confusion"][1][2] == 1


def test_detection_summary_of_a_subset_of_streams():
    from kws.evaluate import detection_summary

    det = {"hop_s": 0.1, "refractory_s": 0.0, "threshold": 0.75}
    pos = [0.95, 0.9, 0.8, 0.6, 0.2]
    a = {"scores": np.array([0.1, 0.7, 0.1]), "seconds": 3600.0, "files": 3}
    b = {"scores": np.array([0.1, 0.85, 0.1]), "seconds": 3600.0, "files": 2}
    both = detection_summary(pos, [a, b], det, min_hours_factor=0.0)
    only_a = detection_summary(pos, [a], det, min_hours_factor=0.0)
    assert both["negative_hours"] == pytest.approx(2.0) and both["negative_files"] == 5
    assert both["frr_at_0.5_fa_per_hour"] == pytest.approx(0.4)  # one FA allowed in 2 h
    assert only_a["negative_hours"] == pytest.approx(1.0)
    assert only_a["frr_at_0.5_fa_per_hour"] == pytest.approx(0.4)  # above 0.7: 0.95, 0.9, 0.8 pass
    assert both["false_alarms"] == 1 and both["detected_at_threshold"] == 3


def test_rates_are_reported_only_with_enough_negative_hours():
    """Rule: FRR at r FA/h only with >= 1.5 / r hours of negatives (0.5 -> 3 h, 1 -> 1.5 h)."""
    from kws.evaluate import detection_summary, hours_needed

    assert hours_needed(0.5) == pytest.approx(3.0) and hours_needed(1.0) == pytest.approx(1.5)
    assert hours_needed(0.5, 3.0) == pytest.approx(6.0)  # the rule of three, on request
    det = {"hop_s": 0.1, "refractory_s": 0.0, "threshold": 0.75}
    pos = [0.95, 0.9, 0.8, 0.6, 0.2]

    def summary(hours):
        return detection_summary(pos, [{"scores": np.array([0.1, 0.85, 0.1]), "seconds": hours * 3600,
                                        "files": 1}], det)

    short = summary(1.0)
    assert short["frr_at_0.5_fa_per_hour"] is None and short["frr_at_1_fa_per_hour"] is None
    assert "needs >= 1.5 h" in short["frr_at_1_fa_per_hour_unreported"]
    assert "1.000 h given" in short["frr_at_1_fa_per_hour_unreported"]
    assert short["frr_at_zero_false_alarms"] == pytest.approx(0.6)  # always given
    mid = summary(2.0)  # one false alarm in 2 h is 0.5 FA/h: allowed at 1 FA/h
    assert mid["frr_at_1_fa_per_hour"] == pytest.approx(0.0) and mid["frr_at_0.5_fa_per_hour"] is None
    assert "frr_at_1_fa_per_hour_unreported" not in mid
    long = summary(3.5)
    assert long["frr_at_0.5_fa_per_hour"] == pytest.approx(0.0)
