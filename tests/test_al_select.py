"""Selection under a budget of audio hours, with optional speaker diversity."""
import pytest

from active_learning.select import SelectionConfig, select_clips
from asr.data import Utterance


def utt(uid, seconds, speaker=None):
    return Utterance(id=uid, audio=f"/{uid}.wav", duration=seconds, text="", speaker=speaker)


def test_highest_scores_that_fit_the_budget():
    utts = [utt("a", 1800), utt("b", 3000), utt("c", 1200), utt("d", 600), utt("e", 100)]
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}  # e has no score: not a candidate
    chosen = select_clips(utts, scores, SelectionConfig(hours=1.0))
    # 3600 s: a (1800) fits, b (3000) no longer does, c (1200) and d (600) do
    assert [u.id for u, _ in chosen] == ["a", "c", "d"]
    assert sum(u.duration for u, _ in chosen) <= 3600
    assert [s for _, s in chosen] == [0.9, 0.7, 0.6]
    assert select_clips(utts, scores, SelectionConfig(hours=0.0)) == []


@pytest.mark.parametrize("hours", [0.1, 0.25, 0.5, 1.0, 2.0])
def test_budget_is_never_exceeded(hours):
    utts = [utt(f"u{i}", 30 + (i * 37) % 400) for i in range(60)]
    scores = {u.id: ((i * 7919) % 101) / 100 for i, u in enumerate(utts)}
    chosen = select_clips(utts, scores, SelectionConfig(hours=hours))
    used = sum(u.duration for u, _ in chosen)
    assert used <= hours * 3600
    # greedy fills: no unchosen clip still fits in what is left
    left = hours * 3600 - used
    ids = {u.id for u, _ in chosen}
    assert all(u.duration > left for u in utts if u.id not in ids)


def test_speaker_decay_spreads_the_choice():
    utts = [utt("a1", 60, "A"), utt("a2", 60, "A"), utt("a3", 60, "A"), utt("b1", 60, "B")]
    scores = {"a1": 0.9, "a2": 0.85, "a3": 0.8, "b1": 0.5}
    plain = select_clips(utts, scores, SelectionConfig(hours=120 / 3600))
    assert [u.id for u, _ in plain] == ["a1", "a2"]
    spread = select_clips(utts, scores, SelectionConfig(hours=120 / 3600, speaker_decay=0.5))
    assert [u.id for u, _ in spread] == ["a1", "b1"]  # a2 decays to 0.425 < 0.5
    with pytest.raises(ValueError, match=">= 0"):
        select_clips(utts, {**scores, "b1": -1.0}, SelectionConfig(hours=1, speaker_decay=0.5))
