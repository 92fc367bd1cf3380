"""Corpus readers on small generated trees in each public layout: speechocean762 / any Kaldi
data folder, CMU AN4, Common Voice. Bad entries (missing audio, empty transcripts, wav.scp
pipes, corrupt MP3) are named in ``rejected`` or a clear error, never a crash later."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.corpora import load_corpus

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def _tone(path: Path, seconds: float = 0.5, fmt: dict = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), SR, **(fmt or {}))
    return path


def _reasons(corpus):
    return {r.id: r.reason for r in corpus.rejected}


def make_speechocean(root: Path) -> Path:
    """train/ and test/ Kaldi folders; wav.scp names .WAV (the public release), the files
    are .WAV, .opus and one missing; one transcript is empty."""
    layout = {
        "train": [("000010011", "0001", "WE CALL IT BEAR", "WAV"),
                  ("000010035", "0001", "ZERO THREE FIVE ONE", "opus"),
                  ("000010053", "0002", "", "WAV"),                 # empty transcript
                  ("000010063", "0002", "ELEPHANTS TAI GOOSE", None)],  # audio missing
        "test": [("000020001", "0003", "MARK IS GOING TO SEE ELEPHANT", "WAV")],
    }
    for split, rows in layout.items():
        d = root / split
        d.mkdir(parents=True)
        text, scp, u2s = [], [], []
        for uid, spk, words, ext in rows:
            rel = f"WAVE/SPEAKER{spk}/{uid}.WAV"
            if ext == "WAV":
                _tone(root / rel, fmt={"format": "WAV"})
            elif ext == "opus":
                _tone((root / rel).with_suffix(".opus"), fmt={"format": "OGG", "subtype": "OPUS"})
            text.append(f"{uid}\t{words}".rstrip())
            scp.append(f"{uid}\t{rel}")
            u2s.append(f"{uid}\t{spk}")
        (d / "text").write_text("\n".join(text) + "\n")
        (d / "wav.scp").write_text("\n".join(scp) + "\n")
        (d / "utt2spk").write_text("\n".join(u2s) + "\n")
        (d / "spk2age").write_text("0001\t6\n0002\t30\n0003\t9\n")
    return root


def test_speechocean762_every_split_or_one(tmp_path):
    root = make_speechocean(tmp_path / "so762")
    both = load_corpus("speechocean762", root)
    assert sorted(u.id for u in both) == ["000010011", "000010035", "000020001"]
    by_id = {u.id: u for u in both}
    assert by_id["000010035"].audio.endswith(".opus")  # .WAV in wav.scp, .opus on disk
    assert by_id["000010011"].speaker == "0001" and by_id["000010011"].meta["age"] == "6"
    assert by_id["000010011"].text == "WE CALL IT BEAR"
    assert abs(by_id["000010011"].duration - 0.5) < 0.01
    reasons = _reasons(both)
    assert "empty transcript" in reasons["000010053"]
    assert "no such file" in reasons["000010063"] or "cannot read" in reasons["000010063"]
    assert "ELEPHANTS" not in str(both)  # the missing clip is not an utterance
    test = load_corpus("speechocean762", root, split="test")
    assert [u.id for u in test] == ["000020001"] and test[0].meta["split"] == "test"
    with pytest.raises(FileNotFoundError, match="no split 'dev'.*test, train"):
        load_corpus("speechocean762", root, split="dev")


def test_kaldi_absolute_paths_segments_and_pipes(tmp_path):
    audio = _tone(tmp_path / "elsewhere" / "rec1.flac", seconds=2.0)
    d = tmp_path / "data" / "train"
    d.mkdir(parents=True)
    _tone(tmp_path / "data" / "my audio" / "rec 3.wav", seconds=1.0)
    (d / "wav.scp").write_text(f"rec1 {audio}\nrec2 sox in.wav -t wav - |\nrec3 my audio/rec 3.wav\n"
                               "rec4 sox in.wav -t wav -\n")
    (d / "segments").write_text("u1 rec1 0.0 0.8\nu2 rec1 0.8 1.9\nu3 rec2 0 1\nu4 rec1 1.5 3.0\n"
                                "u5 rec3 0.1 0.9\nu6 rec4 0 1\n")
    (d / "text").write_text("u1 hello there\nu2 general kenobi\nu3 piped audio\nu4 past the end\n"
                            "u5 a path with a space\nu6 a pipe without its bar\n")
    (d / "utt2spk").write_text("u1 s1\nu2 s1\nu3 s2\nu4 s1\nu5 s2\nu6 s2\n")
    utts = load_corpus("kaldi", d)  # the data folder itself
    assert [(u.id, u.offset, round(u.duration, 2)) for u in utts] == [
        ("u1", 0.0, 0.8), ("u2", 0.8, 1.1), ("u5", 0.1, 0.8)]
    assert utts[2].audio == str(tmp_path / "data" / "my audio" / "rec 3.wav")
    reasons = _reasons(utts)
    assert "command" in reasons["u3"] and "sox in.wav" in reasons["u3"]
    assert "outside" in reasons["u4"]
    # no bar: read as a path (not called a command); not found, with the rule spelled out
    assert "command" not in reasons["u6"].split(";")[0]
    assert "no such file" in reasons["u6"] and "must end with '|'" in reasons["u6"]
    assert [u.id for u in load_corpus("kaldi", tmp_path / "data")] == ["u1", "u2", "u5"]  # parent
    assert [u.id for u in load_corpus("kaldi", d, split="train")] == ["u1", "u2", "u5"]  # its name
    with pytest.raises(FileNotFoundError, match="single Kaldi data folder .split 'train'., so it "
                                                "has no split 'test'"):
        load_corpus("kaldi", d, split="test")  # was read as 'train', --split ignored

    only_pipes = tmp_path / "pipes"
    only_pipes.mkdir()
    (only_pipes / "wav.scp").write_text("r1 flac -c -d -s r1.flac |\n")
    (only_pipes / "text").write_text("r1 some words\n")
    with pytest.raises(ValueError, match="wav.scp: every entry is a command pipe"):
        load_corpus("kaldi", only_pipes)
    with pytest.raises(FileNotFoundError, match="Kaldi"):
        load_corpus("kaldi", tmp_path / "elsewhere")


def test_duplicate_ids_are_refused_naming_both_sources(tmp_path):
    """Results are matched to references by id: an id in two splits (or twice in one table)
    is an error naming it and where each came from, never a silently wrong reference."""
    for split, words, ext in (("a", "YES", "wav"), ("b", "HELLO THERE", "flac")):
        _tone(tmp_path / "data" / split / f"x.{ext}")
        (tmp_path / "data" / split / "text").write_text(f"u1 {words}\n")
        (tmp_path / "data" / split / "wav.scp").write_text(f"u1 {split}/x.{ext}\n")
    with pytest.raises(ValueError, match=r"'u1' is used twice: by \S+x.wav \(split a\) "
                                         r"and by \S+x.flac \(split b\).*--split"):
        load_corpus("kaldi", tmp_path / "data")
    assert [u.text for u in load_corpus("kaldi", tmp_path / "data", split="b")] == ["HELLO THERE"]
    (tmp_path / "data" / "b" / "text").write_text("u1 HELLO THERE\nu2 NO\nu1 GOODBYE\n")
    with pytest.raises(ValueError, match=r"b/text:3: key 'u1' is listed twice \(first on line 1\)"):
        load_corpus("kaldi", tmp_path / "data", split="b")


def make_an4(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "an4_train.transcription").write_text(
        "<s> YES </s> (an251-fash-b)\n<s> TWO SIX EIGHT </s> (an253-fash-b)\n"
        "<s> R O W L A N D </s> (an254-mblw-b)\n<s> </s> (an255-mblw-b)\nnot an an4 line\n")
    (root / "etc" / "an4_test.transcription").write_text("<s> ENTER SIX TWO </s> (an406-fcaw-b)\n")
    _tone(root / "wav/an4_clstk/fash/an251-fash-b.flac")
    _tone(root / "wav/an4_clstk/fash/an253-fash-b.wav")
    _tone(root / "wav/an4_clstk/mblw/an255-mblw-b.flac")  # an254's audio is missing
    _tone(root / "wav/an4test_clstk/fcaw/an406-fcaw-b.flac")
    return root


def test_an4(tmp_path):
    root = make_an4(tmp_path / "an4")
    utts = load_corpus("an4", root)
    assert [(u.id, u.text, u.speaker, u.meta["split"]) for u in utts] == [
        ("an406-fcaw-b", "ENTER SIX TWO", "fcaw", "test"),
        ("an251-fash-b", "YES", "fash", "train"),
        ("an253-fash-b", "TWO SIX EIGHT", "fash", "train")]
    reasons = _reasons(utts)
    assert "no such file" in reasons["an254-mblw-b"]
    assert "empty transcript" in reasons["an255-mblw-b"]
    assert any("not '<s> WORDS </s> (uttid)'" in r for r in reasons.values())
    assert [u.id for u in load_corpus("an4", root, split="test")] == ["an406-fcaw-b"]
    with pytest.raises(FileNotFoundError, match="an4_"):
        load_corpus("an4", tmp_path)


def test_an4_reads_nist_sphere_and_names_the_layout_of_missing_audio(tmp_path):
    """The public AN4 ships NIST SPHERE ``.sph`` (soundfile reads it); audio not found is
    rejected naming the layout it was looked for in."""
    root = tmp_path / "an4"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "an4_train.transcription").write_text(
        "<s> YES </s> (an251-fash-b)\n<s> NO </s> (an252-fash-b)\n<s> GO </s> (an253-fash-b)\n")
    _tone(root / "wav/an4_clstk/fash/an251-fash-b.sph", fmt={"format": "NIST"})
    _tone(root / "wav/an4_clstk/fash/an252-fash-b.SPH", seconds=0.25, fmt={"format": "NIST"})
    utts = load_corpus("an4", root)
    assert [(u.id, Path(u.audio).name, round(u.duration, 2)) for u in utts] == [
        ("an251-fash-b", "an251-fash-b.sph", 0.5), ("an252-fash-b", "an252-fash-b.SPH", 0.25)]
    (missing,) = utts.rejected
    assert missing.audio == str(root / "wav/an4_clstk/fash/an253-fash-b.wav")
    assert "no such file: expected wav/<part>/<spk>/an253-fash-b.<ext>" in missing.reason
    assert ".sph" in missing.reason and ".flac" in missing.reason


def make_commonvoice(root: Path) -> Path:
    clips = root / "clips"
    _tone(clips / "common_voice_en_1.mp3", fmt={"format": "MP3"})
    _tone(clips / "common_voice_en_2.mp3", fmt={"format": "MP3"})
    _tone(clips / "common_voice_en_4.mp3", fmt={"format": "MP3"})
    (clips / "common_voice_en_3.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"junk" * 200)
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    (root / "train.tsv").write_text(
        header + "abc\tcommon_voice_en_1.mp3\tIt's 5 o'clock, \"Mr. Smith\"!\t2\t0\t\t\t\ten\t\n"
        "abc\tcommon_voice_en_3.mp3\tA corrupt clip.\t2\t0\t\t\t\ten\t\n"
        "def\tcommon_voice_en_9.mp3\tA missing clip.\t2\t0\t\t\t\ten\t\n"
        "def\tcommon_voice_en_4.mp3\t\t2\t0\t\t\t\ten\t\n")
    (root / "test.tsv").write_text(header + "ghi\tcommon_voice_en_2.mp3\tHello world.\t2\t0\t\t\t\ten\t\n")
    return root


def test_commonvoice(tmp_path):
    root = make_commonvoice(tmp_path / "cv")
    utts = load_corpus("commonvoice", root)
    assert [(u.id, u.speaker, u.meta["split"]) for u in utts] == [
        ("common_voice_en_2", "ghi", "test"), ("common_voice_en_1", "abc", "train")]
    assert utts[1].text == "It's 5 o'clock, \"Mr. Smith\"!"
    reasons = _reasons(utts)
    assert "cannot read header" in reasons["common_voice_en_3"]  # the corrupt MP3
    assert "no such file" in reasons["common_voice_en_9"]
    assert "empty transcript" in reasons["common_voice_en_4"]
    assert [u.id for u in load_corpus("commonvoice", root, split="test")] == ["common_voice_en_2"]
    (root / "dev.tsv").write_text("client_id\tfile\ttext\n")
    with pytest.raises(ValueError, match="dev.tsv: no column path, sentence"):
        load_corpus("commonvoice", root, split="dev")


def test_split_refused_for_corpora_without_splits(tmp_path):
    with pytest.raises(ValueError, match="no splits"):
        load_corpus("fsdd", tmp_path, split="test")


def evaluate_an4(root, split, rejected):
    """``python -m asr evaluate`` (the FSDD model, plain decoding) on one split of an AN4
    tree, writing the rejected entries to ``rejected``."""
    return subprocess.run(
        [sys.executable, "-m", "asr", "evaluate", "--model", str(ROOT / "data/models/fsdd_ctc.pt"),
         "--plain", "--corpus", "an4", "--data", str(root), "--split", split,
         "--rejected", str(rejected), "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=110)


@pytest.mark.timeout(120)
def test_evaluate_cli_reads_a_corpus_and_lists_rejects(tmp_path):
    """``python -m asr evaluate --corpus an4`` prints one JSON line with ``wer``; the entries
    left out, by the reader or when decoding, are counted and written with their reasons."""
    root = make_an4(tmp_path / "an4")
    # a FLAC whose header reads but whose audio is cut in half: rejected only when decoded
    flac = _tone(root / "wav/an4_clstk/fash/an256-fash-b.flac", seconds=2.0).read_bytes()
    (root / "wav/an4_clstk/fash/an256-fash-b.flac").write_bytes(flac[: len(flac) // 2])
    with open(root / "etc" / "an4_train.transcription", "a") as f:
        f.write("<s> NO </s> (an256-fash-b)\n")
    rejected = tmp_path / "rejected.jsonl"
    out = evaluate_an4(root, "train", rejected)
    assert out.returncode == 0, out.stderr
    lines = [l for l in out.stdout.splitlines() if l.strip()]
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["utterances"] == 2 and metrics["skipped"] == 4 and 0 <= metrics["wer"]
    rows = [json.loads(l) for l in rejected.read_text().splitlines()]
    assert {r["id"] for r in rows} == {"an254-mblw-b", "an255-mblw-b", "an4_train.transcription:5",
                                       "an256-fash-b"}
    assert "cannot decode" in next(r["reason"] for r in rows if r["id"] == "an256-fash-b")
    assert all(r["reason"] and r["audio"] for r in rows)


@pytest.mark.timeout(120)
def test_evaluate_cli_refuses_a_corpus_whose_every_entry_was_rejected(tmp_path):
    """Nothing usable: evaluate stops before decoding with the number rejected and the first
    reasons (it said "nothing could be decoded (0 utterances rejected)"); the file lists all."""
    root = make_an4(tmp_path / "an4")
    (root / "etc" / "an4_test.transcription").write_text(
        "<s> ONE </s> (an407-fcaw-b)\n<s> TWO </s> (an408-fcaw-b)\n")  # no audio for either
    rejected = tmp_path / "rejected.jsonl"
    out = evaluate_an4(root, "test", rejected)
    assert out.returncode != 0 and out.stdout == ""
    assert "all 2 entries were rejected" in out.stderr
    assert "an407-fcaw-b" in out.stderr and "no such file" in out.stderr
    assert "decod" not in out.stderr.lower()
    assert [json.loads(l)["id"] for l in rejected.read_text().splitlines()] == [
        "an407-fcaw-b", "an408-fcaw-b"]
    from asr.corpora import Corpus
    with pytest.raises(ValueError, match="here: no utterances found"):
        Corpus().check_usable("here")


def test_digit_strings_of_an4_for_the_fsdd_recipe(tmp_path):
    from recipes.fsdd.prepare import digit_strings

    root = make_an4(tmp_path / "an4")
    (root / "etc" / "an4_train.transcription").write_text(
        "<s> YES </s> (an251-fash-b)\n<s> TWO SIX EIGHT </s> (an253-fash-b)\n"
        "<s> ZERO OH NINE </s> (an255-mblw-b)\n")
    utts = digit_strings("an4", root, repeat=2)
    # only the clips that say nothing but digits (and "oh"), every split, in scoring form,
    # speakers marked with their corpus so none can be mistaken for an FSDD speaker
    assert [(u.id, u.text, u.speaker) for u in utts] == [
        ("an253-fash-b", "two six eight", "an4:fash"), ("an253-fash-b_r1", "two six eight", "an4:fash"),
        ("an255-mblw-b", "zero oh nine", "an4:mblw"), ("an255-mblw-b_r1", "zero oh nine", "an4:mblw")]
    (root / "etc" / "an4_train.transcription").write_text("<s> YES </s> (an251-fash-b)\n")
    (root / "etc" / "an4_test.transcription").write_text("<s> NO </s> (an406-fcaw-b)\n")
    with pytest.raises(ValueError, match="only digits"):
        digit_strings("an4", root)
