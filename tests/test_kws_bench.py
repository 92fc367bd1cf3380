"""bench/kws_edge_vs_pocketsphinx.py compares like with like: every system is warmed up
before anything is timed, then all process every hop of the same audio in order, taking
turns block by block in a rotating order."""
import pytest

from conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("kws_edge_vs_pocketsphinx.py")


class Recorder:
    """A fake system that logs every call into one shared log."""

    def __init__(self, tag, log, hits=()):
        self.tag, self.log, self.hits = tag, log, set(hits)

    def start(self):
        self.log.append((self.tag, "start"))

    def step(self, k):
        self.log.append((self.tag, k))
        return k in self.hits

    def stop(self):
        self.log.append((self.tag, "stop"))


def test_warm_up_then_interleaved_blocks_over_the_same_hops(bench):
    log = []
    systems = {t: Recorder(t, log, hits=[7] if t == "a" else []) for t in ("a", "b", "c")}
    times, dets = bench.run_interleaved(systems, hops=10, block=4, passes=2, warmup=3)

    # warm-up: each system alone on the first 3 hops, on a stream of its own
    warm = [("a", "start"), ("a", 0), ("a", 1), ("a", 2), ("a", "stop"),
            ("b", "start"), ("b", 0), ("b", 1), ("b", 2), ("b", "stop"),
            ("c", "start"), ("c", 0), ("c", 1), ("c", 2), ("c", "stop")]
    assert log[:len(warm)] == warm
    timed = [e for e in log[len(warm):] if isinstance(e[1], int)]
    # every system sees every hop, in order, once per pass
    for t in systems:
        assert [k for tag, k in timed if tag == t] == list(range(10)) * 2
    # turns of up to 4 hops; who goes first rotates from block to block and pass to pass
    def turns(entries):
        order = []
        for tag, _ in entries:
            if not order or order[-1] != tag:
                order.append(tag)
        return order

    assert turns(timed[:30]) == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # pass 0: blocks 0-3, 4-7, 8-9
    assert turns(timed[30:]) == ["b", "c", "a", "c", "a", "b", "a", "b", "c"]  # pass 1
    assert [k for tag, k in timed[:12]] == [0, 1, 2, 3] * 3
    # one time per hop per pass; detections from the first pass only, at the hop's time
    assert all(len(per_pass) == 2 and all(len(t) == 10 for t in per_pass) for per_pass in times.values())
    assert dets == {"a": [pytest.approx(0.7)], "b": [], "c": []}


def test_streaming_bench_refuses_a_named_model_that_is_missing(tmp_path):
    """bench/kws_streaming.py falls back to its seeded random model for 'built' or a missing
    default only: a mistyped --streaming-model must not be timed as the random model."""
    stream_bench = load_bench("kws_streaming.py")
    with pytest.raises(SystemExit, match="typo.onnx: no such file"):
        stream_bench.main(["--streaming-model", str(tmp_path / "typo.onnx"), "--shared", str(tmp_path)])
