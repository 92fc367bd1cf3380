"""bench/streaming_server.py's partial delay: a word counts from the first partial that
holds it, and a partial is matched only against words already spoken."""
import pytest

from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("streaming_server.py")


def test_delay_runs_from_word_end_to_the_first_partial_holding_it(bench):
    words = "turn the light on".split()
    spans = [(0.1, 0.4), (0.45, 0.6), (0.7, 1.0), (1.1, 1.3)]
    times = [0.5, 0.8, 1.2, 1.5, 1.6]
    texts = ["turn", "turn the", "turn a light", "turn a light on", "turn the light on"]
    delays, missed = bench.first_seen_delays(words, spans, times, texts)
    # turn at 0.5, the at 0.8, light at 1.2, on at 1.5; "the" was shown at 0.8 and kept
    assert delays == pytest.approx([0.1, 0.2, 0.2, 0.2]) and missed == 0


def test_a_word_not_yet_spoken_is_not_matched_early(bench):
    """The early "a" is another word than the reference's later "a"."""
    words = "i saw a cat".split()
    spans = [(0.0, 0.2), (0.3, 0.6), (2.0, 2.1), (2.2, 2.6)]
    delays, missed = bench.first_seen_delays(words, spans, [0.9, 2.8], ["a", "i saw a cat"])
    assert delays == pytest.approx([2.6, 2.2, 0.7, 0.2]) and missed == 0
