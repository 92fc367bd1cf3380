"""RNN-T loss backends: agreement with the float64 reference, pruned loss properties."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from asr.heads.transducer import TransducerConfig, TransducerHead
from asr.losses.rnnt import (
    lattice_from_logits,
    lattice_loss,
    lattice_loss_reference,
    pruned_rnnt_loss,
    pruning_ranges,
    rnnt_loss,
    simple_lattice,
)
from asr.registry import RNNT_LOSSES


def _random_batch(seed: int, B=3, T=7, U=4, V=6, blank=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=dtype)
    labels = [v for v in range(V) if v != blank]
    targets = torch.tensor(labels)[torch.randint(0, len(labels), (B, U), generator=g)]
    logit_lengths = torch.tensor([T] + [int(x) for x in torch.randint(max(1, U), T + 1, (B - 1,), generator=g)])
    target_lengths = torch.tensor([U] + [int(x) for x in torch.randint(0, U + 1, (B - 1,), generator=g)])
    for b in range(B):  # padding with a valid, non-blank id
        targets[b, target_lengths[b]:] = labels[0]
    return logits, targets, logit_lengths, target_lengths


def _brute_force_nll(logits, target, blank):
    """-log P(y|x) by enumerating every alignment (tiny inputs only)."""
    T, U1, V = logits.shape
    U = U1 - 1
    logp = logits.double().log_softmax(-1)
    total = []
    # an alignment: positions of the U labels among T - 1 + U slots (the last blank is fixed)
    for label_slots in itertools.combinations(range(T - 1 + U), U):
        t = u = 0
        s = 0.0
        for slot in range(T - 1 + U):
            if slot in label_slots:
                s += float(logp[t, u, target[u]])
                u += 1
            else:
                s += float(logp[t, u, blank])
                t += 1
        s += float(logp[T - 1, U, blank])
        total.append(s)
    return -math.log(sum(math.exp(x) for x in total))


def test_reference_matches_alignment_enumeration():
    logits, targets, tl, ul = _random_batch(0, B=3, T=4, U=3, V=5, blank=2)
    loss = RNNT_LOSSES.get("reference")(logits, targets, tl, ul, blank=2)
    for b in range(3):
        T, U = int(tl[b]), int(ul[b])
        expected = _brute_force_nll(logits[b, :T, : U + 1], targets[b, :U].tolist(), blank=2)
        assert loss[b].item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("blank", [0, 3, 5])
def test_torchaudio_backend_matches_reference(blank):
    logits, targets, tl, ul = _random_batch(1, B=4, T=9, U=5, V=6, blank=blank)
    ref_in = logits.clone().requires_grad_(True)
    ref = RNNT_LOSSES.get("reference")(ref_in, targets, tl, ul, blank=blank)
    ta_in = logits.float().requires_grad_(True)
    ta = RNNT_LOSSES.get("torchaudio")(ta_in, targets, tl, ul, blank=blank)
    torch.testing.assert_close(ta.double(), ref.detach(), rtol=1e-5, atol=1e-4)
    w = torch.rand(4, dtype=torch.float64)  # per-utterance weights check the (B,) gradient path
    (ref * w).sum().backward()
    (ta * w.float()).sum().backward()
    torch.testing.assert_close(ta_in.grad.double(), ref_in.grad, rtol=1e-4, atol=1e-5)


def test_torchaudio_lattice_trick_matches_reference_dp():
    """torchaudio's kernel with fused_log_softmax=False on a (B,T,U+1,2) lattice == our DP."""
    logits, targets, tl, ul = _random_batch(2, B=4, T=8, U=5, V=7)
    lat64 = lattice_from_logits(logits, targets, blank=0).requires_grad_(True)
    lat32 = lat64.detach().float().requires_grad_(True)
    ref = lattice_loss_reference(lat64, tl, ul)
    ta = lattice_loss(lat32, tl, ul)
    torch.testing.assert_close(ta.double(), ref.detach(), rtol=1e-5, atol=1e-4)
    ref.sum().backward()
    ta.sum().backward()
    torch.testing.assert_close(lat32.grad.double(), lat64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lattice_engines_agree_with_pruned_style_lattices(dtype):
    """dp, torchaudio and reference engines on lattices with -inf arcs (windows), incl. infeasible."""
    logits, targets, tl, ul = _random_batch(11, B=5, T=9, U=6, V=7)
    lattice = lattice_from_logits(logits, targets, blank=0)
    B, T, U1, _ = lattice.shape
    g = torch.Generator().manual_seed(12)
    start = pruning_ranges(-torch.rand(B, T, U1, 2, generator=g), tl, ul, 3)
    start[1, 0] = 1  # utterance 1 loses the start node: no path survives
    u = torch.arange(U1)
    outside = (u[None, None] < start[..., None]) | (u[None, None] >= start[..., None] + 3)
    lattice = lattice.masked_fill(outside[..., None], float("-inf")).to(dtype)
    results = {}
    for engine in ("dp", "torchaudio", "reference"):
        x = lattice.clone().requires_grad_(True)
        if engine == "torchaudio":
            x = lattice.detach().float().clone().requires_grad_(True)
        loss = lattice_loss(x, tl, ul, engine=engine)
        finite = torch.isfinite(loss)
        loss[finite].sum().backward()
        results[engine] = (loss.detach().double(), x.grad.double())
    ref_loss, ref_grad = results["reference"]
    feasible = ref_loss < 1e20  # the reference reports ~1e30 where no path survives
    assert feasible.any() and (~feasible).any()
    for engine in ("dp", "torchaudio"):
        loss, grad = results[engine]
        tol = dict(rtol=1e-5, atol=1e-4) if engine == "torchaudio" or dtype == torch.float32 else {}
        torch.testing.assert_close(loss[feasible], ref_loss[feasible], **tol)
        torch.testing.assert_close(grad[feasible], ref_grad[feasible], **tol)
        assert torch.isinf(loss[~feasible]).all()
    assert (results["dp"][1][~feasible] == 0).all()


def test_warp_rnnt_backend_skips_or_matches():
    backend = RNNT_LOSSES.get("warp_rnnt")
    logits, targets, tl, ul = _random_batch(3)
    try:
        import warp_rnnt  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="warp_rnnt"):
            backend(logits.float(), targets, tl, ul)
        pytest.skip("warp_rnnt not installed")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            backend(logits.float(), targets, tl, ul)
        pytest.skip("no CUDA")
    ref = RNNT_LOSSES.get("reference")(logits, targets, tl, ul)
    got = backend(logits.float().cuda(), targets.cuda(), tl.cuda(), ul.cuda())
    torch.testing.assert_close(got.cpu().double(), ref, rtol=1e-4, atol=1e-4)


def test_simple_lattice_matches_explicit_softmax():
    g = torch.Generator().manual_seed(4)
    B, T, U, V = 2, 6, 3, 9
    am = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 4
    lm = torch.randn(B, U + 1, V, generator=g, dtype=torch.float64) * 4
    targets = torch.randint(1, V, (B, U), generator=g)
    for blank in (0, 4):
        got = simple_lattice(am, lm, targets, blank)
        expected = lattice_from_logits(am[:, :, None] + lm[:, None], targets, blank)
        torch.testing.assert_close(got, expected)


def test_simple_lattice_float32_when_the_two_sides_disagree_by_200_nats():
    """Each side's best token 200 nats ahead, at different tokens: every product in the
    normaliser's matmul is ~exp(-200), which float32 cannot hold (it stops near exp(-87))."""
    g = torch.Generator().manual_seed(14)
    B, T, U, V = 2, 6, 3, 7
    am = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    lm = torch.randn(B, U + 1, V, generator=g, dtype=torch.float64)
    am[..., 2] += 200.0
    lm[..., 5] += 200.0
    _, targets, tl, ul = _random_batch(15, B=B, T=T, U=U, V=V)
    am32 = am.float().requires_grad_(True)
    lm32 = lm.float().requires_grad_(True)
    loss = lattice_loss_reference(simple_lattice(am32, lm32, targets).double(), tl, ul)
    am64, lm64 = am.clone().requires_grad_(True), lm.clone().requires_grad_(True)
    expected = lattice_loss_reference(lattice_from_logits(am64[:, :, None] + lm64[:, None], targets), tl, ul)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    grads = torch.autograd.grad(loss.sum(), [am32, lm32])
    expected_grads = torch.autograd.grad(expected.sum(), [am64, lm64])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def _head(dtype=torch.float64, V=7, blank=0, pred_type="lstm", seed=0):
    torch.manual_seed(seed)
    cfg = TransducerConfig(vocab_size=V, enc_dim=8, pred_type=pred_type, pred_dim=10, joiner_dim=12, blank=blank)
    return TransducerHead(cfg).to(dtype)


def _head_batch(seed, B=3, T=9, U=5, V=7, blank=0, dtype=torch.float64):
    _, targets, tl, ul = _random_batch(seed, B=B, T=T, U=U, V=V, blank=blank)
    enc = torch.randn(B, T, 8, generator=torch.Generator().manual_seed(seed + 100), dtype=dtype)
    return enc, targets, tl, ul


@pytest.mark.parametrize("blank", [0, 2])
def test_pruned_with_full_range_equals_full_loss(blank):
    head = _head(blank=blank)
    enc, targets, tl, ul = _head_batch(5, blank=blank)
    enc.requires_grad_(True)
    dec, _, _ = head.predict(targets, ul)
    full = rnnt_loss("reference", head, enc, dec, targets, tl, ul, blank=blank)
    out = pruned_rnnt_loss(head, enc, dec, targets, tl, ul, blank=blank, prune_range=int(ul.max()) + 1)
    torch.testing.assert_close(out.pruned, full, rtol=1e-12, atol=1e-10)
    params = [enc] + [p for n, p in head.named_parameters() if not n.startswith("simple_")]
    g_full = torch.autograd.grad(full.sum(), params, retain_graph=True)
    g_pruned = torch.autograd.grad(out.pruned.sum(), params, allow_unused=True)
    for a, b in zip(g_full, g_pruned):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    # the adapter with simple_loss_scale = 0 gives the same numbers
    adapted = rnnt_loss("pruned", head, enc, dec, targets, tl, ul, blank=blank, prune_range=50, simple_loss_scale=0.0)
    torch.testing.assert_close(adapted, full, rtol=1e-12, atol=1e-10)


def test_pruned_small_range_is_an_upper_bound():
    head = _head()
    enc, targets, tl, ul = _head_batch(6, B=4, T=12, U=6)
    dec, _, _ = head.predict(targets, ul)
    full = rnnt_loss("reference", head, enc, dec, targets, tl, ul)
    previous = None
    for S in (2, 3, 4, 7):
        out = pruned_rnnt_loss(head, enc, dec, targets, tl, ul, prune_range=S)
        assert torch.isfinite(out.pruned).all()
        assert (out.pruned >= full - 1e-9).all()
        assert (out.total == 0.5 * out.simple + out.pruned).all()
        previous = out.pruned
    torch.testing.assert_close(previous, full)


def test_pruned_float32_matches_float64_and_backward_runs():
    head64 = _head()
    enc, targets, tl, ul = _head_batch(7, B=4, T=10, U=5)
    enc64 = enc.clone().requires_grad_(True)
    dec64, _, _ = head64.predict(targets, ul)
    out64 = pruned_rnnt_loss(head64, enc64, dec64, targets, tl, ul, prune_range=3)
    head32 = _head(dtype=torch.float32)
    enc32 = enc.float().requires_grad_(True)
    dec32, _, _ = head32.predict(targets, ul)
    out32 = pruned_rnnt_loss(head32, enc32, dec32, targets, tl, ul, prune_range=3)
    assert torch.equal(out32.ranges, out64.ranges)
    torch.testing.assert_close(out32.total.double(), out64.total.detach(), rtol=1e-5, atol=1e-4)
    out32.total.sum().backward()
    out64.total.sum().backward()
    # the float32 gradients (fused joiner, lattice engine, simple normaliser) match float64's
    torch.testing.assert_close(enc32.grad.double(), enc64.grad, rtol=1e-4, atol=1e-5)
    for (name, p32), p64 in zip(head32.named_parameters(), head64.parameters()):
        assert p32.grad is not None and p32.grad.abs().sum() > 0, name
        torch.testing.assert_close(p32.grad.double(), p64.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_simple_loss_gradient_matches_autograd():
    """The simple loss reuses one DP for loss, gradient and occupancy; check its gradient."""
    g = torch.Generator().manual_seed(8)
    B, T, U, V = 3, 6, 4, 5
    am = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    lm = torch.randn(B, U + 1, V, generator=g, dtype=torch.float64, requires_grad=True)
    _, targets, tl, ul = _random_batch(8, B=B, T=T, U=U, V=V)
    from asr.losses.lattice import lattice_loss_and_occupancy

    lat = simple_lattice(am, lm, targets)
    loss, occ = lattice_loss_and_occupancy(lat.float(), tl, ul)
    direct = lattice_loss_reference(simple_lattice(am, lm, targets), tl, ul)
    torch.testing.assert_close(loss.double(), direct, rtol=1e-5, atol=1e-4)
    ga = torch.autograd.grad(loss.sum(), [am, lm])
    gb = torch.autograd.grad(direct.sum(), [am, lm])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # node occupancies: each frame of each utterance is left by exactly one blank
    blank_occ = -occ[..., 0].sum(dim=2)  # (B, T)
    for b in range(B):
        torch.testing.assert_close(blank_occ[b, : tl[b]], torch.ones(int(tl[b])), rtol=1e-4, atol=1e-4)


def test_pruning_ranges_are_consistent():
    g = torch.Generator().manual_seed(9)
    B, T, U = 16, 15, 12
    occ = -torch.rand(B, T, U + 1, 2, generator=g)
    tl = torch.randint(5, T + 1, (B,), generator=g)
    ul = torch.randint(0, U + 1, (B,), generator=g)
    ul[0], tl[0] = U, T
    for S in (2, 4, 20):
        s = pruning_ranges(occ, tl, ul, S)
        width = min(S, U + 1)
        assert s.shape == (B, T)
        assert (s[:, 0] == 0).all()
        assert (s >= 0).all() and (s <= U + 1 - width).all()
        assert (s[:, 1:] >= s[:, :-1]).all()
        assert (s[:, 1:] - s[:, :-1] <= width - 1).all()
        for b in range(B):
            if ul[b] + 1 - width <= (width - 1) * (tl[b] - 1):  # feasible
                assert s[b, tl[b] - 1] + width - 1 >= ul[b]
    # The windows follow the occupancy: all of it on one alignment (at most S - 1 labels
    # per frame) puts every frame's node of that alignment inside its window.
    S, T, U = 3, 10, 12
    path = torch.tensor([0, 0, 2, 4, 4, 5, 7, 9, 11, 12])  # label position at each frame
    occ = torch.zeros(1, T, U + 1, 2)
    occ[0, torch.arange(T), path, 0] = -1.0
    s = pruning_ranges(occ, torch.tensor([T]), torch.tensor([U]), S)[0]
    assert ((s <= path) & (path < s + S)).all(), (s, path)


def test_registry_names():
    assert {"torchaudio", "reference", "warp_rnnt", "pruned"} <= set(RNNT_LOSSES.names())


@pytest.mark.parametrize("seed, B, T, U, V", [(10, 3, 9, 5, 7), (17, 4, 12, 8, 11), (18, 2, 20, 3, 5), (19, 5, 8, 8, 9)])
def test_pruned_loss_bounds_torchaudio_full_loss_under_no_grad(seed, B, T, U, V):
    """Pruning removes paths, so per utterance the pruned term is >= torchaudio's full loss
    (float32, under no_grad as in validation); a window over the whole lattice gives it exactly."""
    head = _head(dtype=torch.float32, V=V, seed=seed)
    enc, targets, tl, ul = _head_batch(seed, B=B, T=T, U=U, V=V, dtype=torch.float32)
    with torch.no_grad():
        dec, _, _ = head.predict(targets, ul)
        full = rnnt_loss("torchaudio", head, enc, dec, targets, tl, ul)
        assert torch.isfinite(full).all()
        slack = 1e-4 + 1e-5 * full.abs()  # float32 rounding of two different DPs
        for S in (2, 3):
            pruned = rnnt_loss("pruned", head, enc, dec, targets, tl, ul, prune_range=S, simple_loss_scale=0.0)
            assert pruned.shape == (B,)
            assert (pruned >= full - slack).all(), (S, pruned, full)
            if S == 2:  # utterance 0 has all U >= 3 labels: a 2-wide window must cut some mass
                assert pruned[0] > full[0] + 1e-3
        whole = rnnt_loss("pruned", head, enc, dec, targets, tl, ul, prune_range=U + 1, simple_loss_scale=0.0)
    torch.testing.assert_close(whole, full, rtol=1e-5, atol=1e-4)


def test_adapter_passes_lattice_engine_and_joiner_chunking(monkeypatch):
    import asr.losses.pruned as pruned_module

    head = _head()
    enc, targets, tl, ul = _head_batch(16, B=3, T=9, U=5)
    dec, _, _ = head.predict(targets, ul)
    with pytest.raises(ValueError, match="lattice engine"):
        rnnt_loss("pruned", head, enc, dec, targets, tl, ul, lattice_engine="nope")
    by_engine = [rnnt_loss("pruned", head, enc, dec, targets, tl, ul, lattice_engine=e) for e in ("dp", "reference")]
    torch.testing.assert_close(by_engine[0], by_engine[1])
    # joiner_chunk_elements sets the fused joiner's frames per chunk (its last argument)
    frames_seen = []
    fused = pruned_module._FusedJoinerArcLogProbs

    class RecordingFused:
        @staticmethod
        def apply(*args):
            frames_seen.append(args[-1])
            return fused.apply(*args)

    monkeypatch.setattr(pruned_module, "_FusedJoinerArcLogProbs", RecordingFused)
    one_row = 3 * 3 * 12  # B * S * max(Dj, V): one frame per chunk
    per_frame = rnnt_loss("pruned", head, enc, dec, targets, tl, ul, prune_range=3, joiner_chunk_elements=one_row)
    one_pass = rnnt_loss("pruned", head, enc, dec, targets, tl, ul, prune_range=3, joiner_chunk_elements=0)
    assert frames_seen == [1, 9]
    torch.testing.assert_close(per_frame, one_pass)


class _PlainJoiner:
    """The joiner protocol without the fused fast path (no join_hidden/output)."""

    def __init__(self, head):
        self.head = head

    def join(self, enc, dec):
        return self.head.join(enc, dec)

    def project_enc(self, enc):
        return self.head.project_enc(enc)

    def project_dec(self, dec):
        return self.head.project_dec(dec)

    def join_projected(self, enc_proj, dec_proj):
        return self.head.join_projected(enc_proj, dec_proj)

    def simple_am(self, enc):
        return self.head.simple_am(enc)

    def simple_lm(self, dec):
        return self.head.simple_lm(dec)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_pruned_joiner_paths_agree(activation):
    """Fused chunked joiner, checkpointed frame chunks and the one-pass joiner agree."""
    torch.manual_seed(0)
    head = TransducerHead(TransducerConfig(
        vocab_size=7, enc_dim=8, pred_dim=10, joiner_dim=12, joiner_activation=activation
    )).double()
    enc, targets, tl, ul = _head_batch(13, B=3, T=11, U=5)
    enc.requires_grad_(True)
    dec, _, _ = head.predict(targets, ul)
    variants = {
        "fused, one frame per chunk": (head, 1),
        "fused, one chunk": (head, None),
        "checkpointed frames": (_PlainJoiner(head), 40),
        "plain": (_PlainJoiner(head), None),
    }
    params = [enc] + list(head.parameters())
    expected = None
    for name, (joiner, chunk) in variants.items():
        out = pruned_rnnt_loss(joiner, enc, dec, targets, tl, ul, prune_range=3, joiner_chunk_elements=chunk)
        grads = torch.autograd.grad(out.total.sum(), params, retain_graph=True)
        if expected is None:
            expected = (out.total.detach(), grads)
            continue
        torch.testing.assert_close(out.total, expected[0], msg=name)
        for a, b in zip(grads, expected[1]):
            torch.testing.assert_close(a, b, msg=name)
