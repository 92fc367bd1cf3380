"""EGL scores against a direct computation: per clip, one backward per N-best hypothesis,
gradient norms weighted by the renormalised posteriors."""
import math

import pytest
import torch

from active_learning.gradients import select_parameters
from active_learning.nbest import search_nbest
from active_learning.scorers import ScoringConfig, build_scorer
from asr.config import EncoderConfig, ExperimentConfig, FeatureConfig, HeadConfig
from asr.model import ASRModel

VOCAB = 7


def tiny_model(heads, seed=0):
    torch.manual_seed(seed)
    cfg = ExperimentConfig(features=FeatureConfig(n_mels=20),
                           encoder=EncoderConfig(subsampling=4, conv_channels=4, hidden_size=12,
                                                 num_layers=2, dropout=0.3),
                           heads=heads)
    model = ASRModel(cfg, VOCAB)
    model.train()  # the scorer must switch to eval itself (dropout 0.3 would show)
    return model


def clips(seed=1):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([4800, 8000, 6400])  # different lengths: the batch is padded
    waves = torch.zeros(3, int(lens.max()))
    for b, n in enumerate(lens.tolist()):
        waves[b, :n] = 0.3 * torch.randn(n, generator=g)
    return waves, lens


def direct_egl(model, head_name, waves, lens, cfg):
    """Clip by clip, unpadded; loss.backward() once per hypothesis."""
    model.eval()
    head = model.heads[head_name]
    params = select_parameters(model, head_name, cfg.params)
    out = []
    for b in range(waves.shape[0]):
        wave, n = waves[b:b + 1, : lens[b]], lens[b:b + 1]
        with torch.no_grad():
            enc, enc_lens = model.encode(wave, n)
        nbest = search_nbest(head, enc, enc_lens, cfg.nbest, cfg.beam)[0].nbest
        logz = math.log(sum(math.exp(h.score) for h in nbest))
        frames = int(enc_lens[0])  # the clip's own encoder frames, unpadded
        total = 0.0
        for h in nbest:
            model.zero_grad()
            enc, enc_lens = model.encode(wave, n)
            target = torch.tensor([h.tokens or [0]])
            loss = head.loss(enc, enc_lens, target, torch.tensor([len(h.tokens)]))
            loss.sum().backward()
            norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params.values()
                                 if p.grad is not None))
            divisor = {"tokens": max(len(h.tokens), 1), "frames": frames, "none": 1}[cfg.egl_length_norm]
            total += math.exp(h.score - logz) * norm / divisor
        out.append(total)
    return out


CASES = [
    ({"ctc": HeadConfig()}, "all", "none"),
    ({"ctc": HeadConfig()}, "head", "tokens"),
    ({"ctc": HeadConfig()}, "all", "frames"),  # each clip in its own graph
    ({"transducer": HeadConfig(options={"pred_dim": 8, "joiner_dim": 8, "loss": "torchaudio"})},
     "head", "frames"),  # one padded batch through the encoder
    ({"transducer": HeadConfig(options={"pred_dim": 8, "joiner_dim": 8, "prune_range": 5})},
     "all", "none"),
    ({"transducer": HeadConfig(options={"pred_dim": 8, "joiner_dim": 8, "loss": "torchaudio"})},
     "last_encoder_layer", "tokens"),
]


@pytest.mark.parametrize("heads,params,length_norm", CASES)
def test_egl_equals_explicit_per_hypothesis_gradients(heads, params, length_norm):
    model = tiny_model(heads)
    head_name = next(iter(heads))
    cfg = ScoringConfig(method="egl", nbest=3, beam=4, params=params, egl_length_norm=length_norm)
    waves, lens = clips()
    scores = build_scorer(model, cfg).score(["a", "b", "c"], waves, lens)
    expected = direct_egl(model, head_name, waves, lens, cfg)
    assert all(s > 0 for s in expected)
    assert scores == pytest.approx(expected, rel=1e-4)
    # the scorer leaves every parameter trainable as it found it
    assert all(p.requires_grad for p in model.parameters())


def test_parameter_subsets_differ_and_unknown_prefix_is_refused():
    model = tiny_model({"ctc": HeadConfig(), "transducer": HeadConfig(options={"pred_dim": 8, "joiner_dim": 8})})
    every = set(select_parameters(model, "ctc", "all"))
    assert not any(n.startswith("heads.transducer.") for n in every)  # other heads never count
    assert set(select_parameters(model, "ctc", "heads.")) == {"heads.ctc.proj.weight", "heads.ctc.proj.bias"}
    assert set(select_parameters(model, "ctc", "head")) == {"heads.ctc.proj.weight", "heads.ctc.proj.bias"}
    last = set(select_parameters(model, "ctc", "last_encoder_layer"))
    assert last and all(n.startswith(("encoder.rnn.forward_layers.1.", "encoder.rnn.backward_layers.1."))
                        for n in last)
    with pytest.raises(ValueError, match="no parameters"):
        select_parameters(model, "ctc", "decoder.")
    conformer = ASRModel(ExperimentConfig(
        features=FeatureConfig(n_mels=20), heads={"ctc": HeadConfig()},
        encoder=EncoderConfig(name="conformer", conv_channels=4, hidden_size=16, num_layers=1)), VOCAB)
    with pytest.raises(ValueError, match="last_encoder_layer: .* no recurrent layers"):
        select_parameters(conformer, "ctc", "last_encoder_layer")
