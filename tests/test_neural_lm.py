"""The LSTM LM for N-best rescoring: it learns a tiny grammar, scores a padded batch as it
scores each sequence alone, re-ranks an N-best list toward the fluent hypothesis, saves
and loads (refusing a truncated file by name), and trains and rescores from the CLI."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from asr.__main__ import main
from asr.checkpoint import CheckpointError, load_model
from asr.decoding import decoding_options
from asr.neural_lm import LSTMLM, LSTMLMConfig, perplexity, train_neural_lm
from asr.search.rescore import rescore_nbest_lm
from asr.search.types import Hypothesis, SearchResult
from asr.text import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
FSDD_CTC = ROOT / "data" / "models" / "fsdd_ctc.pt"
FSDD = ROOT.parent / "shared" / "corpora" / "fsdd" / "recordings"

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird"]
VERBS = ["sees", "likes", "follows", "hears"]
OBJECTS = ["the ball", "a red car", "the green tree", "my house", "a big boat"]


def grammar_sentences(n: int, seed: int):
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}" for _ in range(n)]


@pytest.fixture(scope="module")
def grammar_lm():
    tok = CharTokenizer()
    lm, report = train_neural_lm(grammar_sentences(400, seed=0), tok,
                                 LSTMLMConfig(embedding_size=16, hidden_size=64, dropout=0.0),
                                 epochs=20, max_steps=250, batch_size=16, lr=1e-2, progress=False)
    return lm, report


def test_lm_prefers_held_out_grammatical_sentences_to_shuffled_ones(grammar_lm):
    lm, report = grammar_lm
    assert report["sentences"] == 400 and report["valid_sentences"] == 20
    assert report["valid_perplexity"] < 3.0
    tok, rng = lm.tokenizer, random.Random(1)
    held_out = grammar_sentences(50, seed=99)
    shuffled = ["".join(rng.sample(s, len(s))) for s in held_out]  # same characters
    fluent = perplexity(lm, [tok.encode(s) for s in held_out])
    scrambled = perplexity(lm, [tok.encode(s) for s in shuffled])
    assert fluent < 3.0 and scrambled > 3 * fluent, (fluent, scrambled)


def test_batch_scores_equal_each_sequence_alone():
    torch.manual_seed(0)
    lm = LSTMLM(LSTMLMConfig(embedding_size=8, hidden_size=16, num_layers=2), CharTokenizer()).eval()
    seqs = [[3, 4, 5, 6, 7], [8], [], [9, 10, 3]]
    lens = torch.tensor([len(s) for s in seqs])
    # padding of real, non-zero tokens: it must not reach any sequence's score
    tokens = torch.randint(1, lm.tokenizer.vocab_size, (len(seqs), 6))
    for n, s in enumerate(seqs):
        tokens[n, : len(s)] = torch.tensor(s, dtype=torch.long)
    batch = lm.sequence_log_probs(tokens, lens)
    alone = torch.stack([lm.sequence_log_probs(torch.tensor([s], dtype=torch.long).reshape(1, -1),
                                               torch.tensor([len(s)])) for s in seqs]).squeeze(-1)
    assert batch.shape == (4,)
    torch.testing.assert_close(batch, alone)
    assert (batch < 0).all()


def test_rescoring_lets_the_fluent_hypothesis_win(grammar_lm):
    lm, _ = grammar_lm
    tok = lm.tokenizer
    texts = ["the cat sees teh bal", "the cat sees the bal", "the cat sees the ball"]
    scores = [-4.0, -4.2, -4.5]  # the first pass prefers misspellings
    nbest = [SearchResult([Hypothesis(tok.encode(t), s, list(range(len(t)))) for t, s in zip(texts, scores)])]
    kept = rescore_nbest_lm(lm, nbest, weight=0.0)[0]
    assert [tok.decode(h.tokens) for h in kept.nbest] == texts
    assert [h.score for h in kept.nbest] == scores
    best = rescore_nbest_lm(lm, nbest, weight=1.0)[0].best
    assert tok.decode(best.tokens) == "the cat sees the ball"
    assert best.times == list(range(len("the cat sees the ball")))
    with torch.no_grad():
        lm_score = float(lm.sequence_log_probs(torch.tensor([best.tokens]), torch.tensor([len(best.tokens)])))
    assert best.score == pytest.approx(-4.5 + lm_score)
    with pytest.raises(ValueError, match=">= 0"):
        rescore_nbest_lm(lm, nbest, weight=-1.0)


def test_save_load_round_trip_and_truncated_file_named(grammar_lm, tmp_path):
    lm, _ = grammar_lm
    path = lm.save(tmp_path / "lm.pt")
    back = LSTMLM.load(path)
    assert back.cfg == lm.cfg and back.tokenizer.to_dict() == lm.tokenizer.to_dict()
    tokens, lens = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    torch.testing.assert_close(back.sequence_log_probs(tokens, lens), lm.sequence_log_probs(tokens, lens))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="broken.pt: cannot read LSTM LM"):
        LSTMLM.load(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a speechkit LSTM LM"):
        LSTMLM.load(foreign)


def test_decoding_options_load_the_lm_and_refuse_another_tokenizer(tmp_path, capsys):
    model, tok, cfg = load_model(FSDD_CTC)
    good = LSTMLM(LSTMLMConfig(hidden_size=8), tok).save(tmp_path / "good.pt")
    opts = decoding_options(model, tok, cfg, FSDD_CTC, nbest=4, rescore_lm=str(good))
    assert isinstance(opts["rescore_lm"], LSTMLM) and opts["rescore_lm_weight"] == 0.5
    with pytest.raises(ValueError, match="good.pt.*nbest > 1"):
        decoding_options(model, tok, cfg, FSDD_CTC, rescore_lm=str(good))
    # the streaming transcriber keeps no N-best list: refused, not silently ignored
    clip = FSDD / "7_theo_3.wav"
    assert main(["transcribe", "--model", str(FSDD_CTC), "--streaming", "--nbest", "4",
                 "--rescore-lm", str(good), str(clip)]) == 2
    assert "--streaming keeps no N-best list" in capsys.readouterr().err
    other = LSTMLM(LSTMLMConfig(hidden_size=8), CharTokenizer("abc ")).save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: the LM was trained for another tokenizer"):
        decoding_options(model, tok, cfg, FSDD_CTC, nbest=4, rescore_lm=str(other))


@pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/corpora/fsdd not present")
def test_cli_trains_an_lm_and_evaluate_rescores_with_it(tmp_path):
    texts = tmp_path / "digits.txt"
    texts.write_text("".join(f"{w}\n" for w in ["zero", "one", "two", "three", "seven"] * 20))
    lm_path = tmp_path / "digits_lm.pt"
    run = lambda *args: subprocess.run([sys.executable, "-m", "asr", *args], cwd=ROOT,
                                       capture_output=True, text=True, timeout=120)
    out = run("lm", "--texts", str(texts), "--model", str(FSDD_CTC), "--out", str(lm_path),
              "--hidden", "32", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip())
    assert report["lm"] == str(lm_path) and report["sentences"] == 100 and report["valid_sentences"] == 5
    assert report["train_perplexity"] > 1 and report["valid_perplexity"] > 1

    clips = [FSDD / f"{digit}_theo_0.wav" for digit in range(3)]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(
        json.dumps({"id": c.stem, "audio": str(c), "text": word, "duration": sf.info(c).duration,
                    "sample_rate": sf.info(c).samplerate}) + "\n"
        for c, word in zip(clips, ["zero", "one", "two"])))
    out = run("evaluate", "--model", str(FSDD_CTC), "--corpus", "manifest", "--data", str(manifest),
              "--plain", "--search", "ctc_prefix_beam", "--beam", "4", "--nbest", "4",
              "--rescore-lm", str(lm_path), "--rescore-lm-weight", "0.3", "--threads", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["utterances"] == 3 and 0.0 <= metrics["wer"] <= 1.0
    assert metrics["decoding"]["rescore_lm"] == str(lm_path)
    assert metrics["decoding"]["rescore_lm_weight"] == 0.3 and metrics["decoding"]["nbest"] == 4
