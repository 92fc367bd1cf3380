import pytest

from asr.text import CharTokenizer, SentencePieceTokenizer, Tokenizer, build_tokenizer, normalize_text


@pytest.mark.parametrize("raw,norm", [
    ("Hello, World!", "hello world"),
    ("  Don't   STOP-now ", "don't stop now"),
    ("Café 42", "cafe forty two"),
    ("3 cats, 105 dogs", "three cats one hundred five dogs"),
    ("the 21st of May 1990", "the twenty first of may nineteen ninety"),
    ("in 2005 and 2024", "in two thousand five and twenty twenty four"),
    ("1,250 people, 3.75%", "one thousand two hundred fifty people three point seven five percent"),
    ("call 007 or 5551234567", "call zero zero seven or five five five one two three four five six seven"),
    ("'quoted' words", "quoted words"),
    # non-speech markers are dropped, not spelled as words; an editorial [word] stays
    ("[noise] yes <unk> no {laugh} [VOCALIZED-NOISE] ok [laughter]", "yes no ok"),
    ("<s> HELLO </s>", "hello"),
    ("he [Oswald] had", "he oswald had"),
    # decades and centuries
    ("the 1990s, the '80s and the 1800's", "the nineteen nineties the eighties and the eighteen hundreds"),
    # money
    ("$5 or $1", "five dollars or one dollar"),
    ("$1.50, $0.99 and $0.01", "one dollar fifty cents ninety nine cents and one cent"),
    ("£1,250 and £2.05", "one thousand two hundred fifty pounds and two pounds five pence"),
    ("€2.5 million, $3 billion", "two point five million euros three billion dollars"),
    ("", ""),
])
def test_normalize(raw, norm):
    assert normalize_text(raw) == norm


def test_char_roundtrip_and_blank():
    tok = CharTokenizer()
    ids = tok.encode("it's ok")
    assert 0 not in ids and tok.decode(ids) == "it's ok"
    assert tok.vocab_size == 29 and tok.token(0) == "<blank>"
    assert tok.decode([0] + ids + [0]) == "it's ok"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("Upper")


def test_sentencepiece_roundtrip_and_serialisation():
    texts = [normalize_text(t) for t in [
        "turn on the lights", "turn off the lights", "play the next song", "set a timer",
        "what is the weather today", "three five seven nine", "one two three four",
    ]] * 20
    tok = SentencePieceTokenizer.train(texts, vocab_size=40)
    ids = tok.encode("turn on the next song")
    assert min(ids) >= 1 and tok.decode(ids) == "turn on the next song"
    again = Tokenizer.from_dict(tok.to_dict())
    assert again.encode("play the lights") == tok.encode("play the lights")
    assert again.vocab_size == tok.vocab_size


def test_build_tokenizer_rejects_unknown():
    with pytest.raises(ValueError, match="tokenizer"):
        build_tokenizer("bpe-magic")
