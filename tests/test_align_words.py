"""Word timings by CTC forced alignment (asr.align), on a model whose posteriors are set
by hand, and on the shipped streaming English model with synthetic speech whose word
positions are known."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from asr.align import AlignmentError, align_words, word_groups
from asr.heads.ctc import CTCHead
from asr.text import CharTokenizer, SentencePieceTokenizer

FRAME_S = 0.04


class ScriptedCTC(nn.Module):
    """A 'model' whose CTC head emits, frame by frame, the tokens of ``script`` (one
    character per frame, '_' = blank) with posterior ``p`` (the rest spread evenly)."""

    frame_seconds = FRAME_S

    def __init__(self, script: str, tokenizer: CharTokenizer, p: float = 0.98) -> None:
        super().__init__()
        V = tokenizer.vocab_size
        ids = [0 if ch == "_" else tokenizer.encode(ch)[0] for ch in script]
        probs = torch.full((len(ids), V), (1 - p) / (V - 1))
        probs[torch.arange(len(ids)), ids] = p
        self.enc = probs.log()
        self.heads = nn.ModuleDict({"ctc": CTCHead(V, V)})
        with torch.no_grad():  # log_softmax(log p) = log p: the head passes the script through
            self.heads["ctc"].proj.weight.copy_(torch.eye(V))
            self.heads["ctc"].proj.bias.zero_()
        self.cfg = SimpleNamespace(features=SimpleNamespace(sample_rate=16000))

    def encode(self, waves, wave_lens):
        return self.enc[None], torch.tensor([self.enc.shape[0]])


def test_words_get_the_frames_of_their_first_and_last_characters():
    tok = CharTokenizer()
    #         0123456789012345678
    script = "___go____ _u_pp___"
    model = ScriptedCTC(script, tok)
    spans = align_words(model, tok, torch.zeros(16000), "Go, UP!")  # normalised to "go up"
    assert [s.word for s in spans] == ["go", "up"]
    assert spans[0].start == pytest.approx(3 * FRAME_S) and spans[0].end == pytest.approx(5 * FRAME_S)
    assert spans[1].start == pytest.approx(11 * FRAME_S) and spans[1].end == pytest.approx(15 * FRAME_S)
    assert all(s.score > 0.9 for s in spans)
    # the same audio scored against a word it does not hold: the path is forced, the score low
    wrong = align_words(model, tok, torch.zeros(16000), "go on")
    assert wrong[1].word == "on" and wrong[1].score < 0.6 < spans[1].score


def test_repeated_letters_and_bad_transcripts():
    tok = CharTokenizer()
    model = ScriptedCTC("_o_o__ff__", tok)  # "oof": needs a blank between the two o's
    (span,) = align_words(model, tok, torch.zeros(8000), "oof")
    assert span.start == pytest.approx(1 * FRAME_S) and span.end == pytest.approx(8 * FRAME_S)
    with pytest.raises(AlignmentError, match="needs 13 frames"):
        align_words(model, tok, torch.zeros(8000), "a longer text")
    with pytest.raises(AlignmentError, match="empty"):
        align_words(model, tok, torch.zeros(8000), " ?! ")
    model.heads = nn.ModuleDict({"transducer": nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="needs a CTC head"):
        align_words(model, tok, torch.zeros(8000), "oof")


def test_word_groups_for_sentencepiece_pieces():
    tok = SentencePieceTokenizer.train(["turn left now", "turn right away", "go up and down now"] * 20,
                                       vocab_size=30)
    for text in ("turn left now", "go down and up"):
        tokens = tok.encode(text)
        groups = word_groups(tok, tokens)
        assert [tok.decode([tokens[i] for i in g]) for g in groups] == text.split()
    chars = CharTokenizer()
    tokens = chars.encode("go up")
    assert word_groups(chars, tokens) == [[0, 1], [3, 4]]


def test_the_shipped_streaming_model_finds_synthetic_words(tmp_path):
    """Three words rendered one by one and joined with 80 ms gaps, so each word's place is
    known: the spikes of the middle word fall inside it or within the documented lag."""
    from asr.checkpoint import load_model
    from kws.data import load_audio
    from kws.synth import Voice, available_engines, synthesize

    if "espeak" not in available_engines():
        pytest.skip("espeak-ng not installed")
    model, tok, _ = load_model("data/models/english_streaming.pt")
    gap = torch.zeros(1280)
    for words in (["please", "go", "home"], ["turn", "left", "now"]):
        parts = [load_audio(synthesize(w, Voice("espeak", "en-us"), tmp_path), 16000) for w in words]
        wave = torch.cat([gap, parts[0], gap, parts[1], gap, parts[2], gap])
        onset = (2 * gap.numel() + parts[0].numel()) / 16000
        offset = onset + parts[1].numel() / 16000
        spans = align_words(model, tok, wave, " ".join(words))
        assert [s.word for s in spans] == words
        assert spans[0].start < spans[1].start < spans[2].start
        assert onset <= spans[1].start <= offset + 0.1  # the streaming model's spikes lag
        assert spans[1].end <= offset + 0.35


def test_align_command_prints_words_and_names_what_it_cannot_align(tmp_path, capsys):
    import json

    from asr.__main__ import main
    from kws.synth import Voice, available_engines, synthesize

    if "espeak" not in available_engines():
        pytest.skip("espeak-ng not installed")
    wav = synthesize("turn left now", Voice("espeak", "en-us"), tmp_path)
    texts = tmp_path / "text"
    texts.write_text(f"{wav.stem} Turn LEFT, now.\n")
    missing = tmp_path / "gone.wav"
    rc = main(["align", "--model", "data/models/english_streaming.pt", "--texts", str(texts), str(wav), str(missing)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1 and len(lines) == 2
    words = lines[0]["words"]
    assert [w["word"] for w in words] == ["turn", "left", "now"]
    assert all(0 <= w["start"] < w["end"] for w in words) and words[0]["end"] <= words[2]["start"]
    assert "gone.wav" in lines[1]["error"] and "words" not in lines[1]


def test_align_command_finds_a_manifest_transcript_however_the_path_is_written(tmp_path, monkeypatch, capsys):
    """Manifests written by the toolkit hold absolute audio paths; a file named relative to
    the working folder (or with ./) is the same file and gets its transcript."""
    import json

    import numpy as np
    import soundfile as sf

    import asr.checkpoint
    from asr.__main__ import main
    from asr.data import Utterance, write_manifest

    tok = CharTokenizer()
    model = ScriptedCTC("___go____ _u_pp___", tok)
    cfg = SimpleNamespace(sample_rate=16000)
    monkeypatch.setattr(asr.checkpoint, "load_model", lambda path: (model, tok, cfg))
    clip = tmp_path / "wavs" / "clip.wav"
    clip.parent.mkdir()
    sf.write(clip, np.zeros(16000, np.float32), 16000)
    manifest = write_manifest([Utterance("u1", str(clip), 1.0, "go up")], tmp_path / "m" / "test.jsonl")
    monkeypatch.chdir(tmp_path)
    rc = main(["align", "--model", "stand-in", "--texts", str(manifest), "wavs/clip.wav", "./wavs/clip.wav"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0, lines
    assert [[w["word"] for w in line["words"]] for line in lines] == [["go", "up"], ["go", "up"]]
