import json
import os
import subprocess
import sys
import textwrap

import pytest

from mirasol.config import MirasolConfig
from mirasol.data.manifest import CAPTION_PROMPT, CLASSIFY_PROMPT
from mirasol.data.tokenizer import (
    IGNORE_INDEX,
    MirasolTokenizer,
    pad_examples,
    train_tokenizer_from_manifests,
)

TEXTS = [
    "what color is the square?", "red", "green", "blue", "the square is red", "how many circles are there?",
    "two", "three", "more than ten", "is the piano louder than the violin?", "yes", "no",
    "a dog barks in a park", "people slurping", "church bell", CAPTION_PROMPT, CLASSIFY_PROMPT,
] * 3


@pytest.fixture(scope="module")
def tok():
    return MirasolTokenizer.train(TEXTS, vocab_size=320)


def test_special_ids_match_config(tok):
    cfg = MirasolConfig()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (
        cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.sep_token_id) == (0, 1, 2, 3)
    vocab = tok.backend.get_vocab()
    assert [vocab[t] for t in ("<pad>", "<bos>", "<eos>", "<sep>")] == [0, 1, 2, 3]
    assert 260 < tok.vocab_size <= 320 and len(tok) == tok.vocab_size


def test_text_never_becomes_a_special(tok):
    ids = tok.encode("<eos> <sep> <pad> <bos>")
    assert not set(ids) & {0, 1, 2, 3}
    assert tok.decode(ids) == "<eos> <sep> <pad> <bos>"


@pytest.mark.parametrize("text", [
    "naïve café, über straße", "日本語のテキスト", "中文问题：这是什么？", "🎉👍🏽 emoji 🇫🇷", "Ωμέγα and ЖЖЖ",
    "How many sounding erhu in the video\uff1f", "tabs\tand  double  spaces", "zero\u200bwidth", "x",
])
def test_unicode_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_answer_tokens_consistent_in_context(tok):
    # prefix space: an answer alone tokenizes like the same word inside a sentence
    red = tok.encode("red")
    sentence = tok.encode("the square is red")
    assert sentence[-len(red):] == red
    assert tok.decode(red) == "red"


def test_deterministic_in_process_and_across_processes(tok, tmp_path):
    again = MirasolTokenizer.train(TEXTS, vocab_size=320)
    assert again.to_json() == tok.to_json()
    # a fresh interpreter has fresh hash seeds (Python and Rust): the file must still be identical
    script = textwrap.dedent(f"""
        import sys
        from mirasol.data.tokenizer import MirasolTokenizer
        MirasolTokenizer.train({TEXTS!r}, vocab_size=320).save(sys.argv[1])
    """)
    for i in range(2):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"t{i}.json")], check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(i + 11)})
    files = [(tmp_path / f"t{i}.json").read_bytes() for i in range(2)]
    assert files[0] == files[1] == tok.to_json().encode("utf-8")


def test_save_load_file_or_folder(tok, tmp_path):
    file = tok.save(tmp_path / "run")
    assert file == tmp_path / "run" / "tokenizer.json" and file.is_file()
    loaded = MirasolTokenizer.load(tmp_path / "run")
    assert loaded.to_json() == tok.to_json()
    assert loaded.encode("what color is the square?") == tok.encode("what color is the square?")
    other = tok.save(tmp_path / "custom.json")
    assert MirasolTokenizer.load(other).vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError):
        MirasolTokenizer.load(tmp_path / "nowhere")


def test_load_rejects_wrong_specials(tok, tmp_path):
    data = json.loads(tok.to_json())
    for entry in data["added_tokens"]:
        if entry["content"] == "<eos>":
            entry["content"] = "<end>"
    data["model"]["vocab"]["<end>"] = data["model"]["vocab"].pop("<eos>")
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="<eos>"):
        MirasolTokenizer.load(tmp_path)


def test_encode_prompt(tok):
    ids = tok.encode_prompt("what color is the square?")
    assert ids[0] == tok.bos_id and ids[-1] == tok.sep_id
    assert ids[1:-1] == tok.encode("what color is the square?")
    short = tok.encode_prompt("what color is the square?", max_len=4)
    assert len(short) == 4 and short[0] == 1 and short[-1] == 3 and short[1:3] == ids[1:3]


def test_encode_example_masks_prompt(tok):
    prompt, answer = "what color is the square?", "more than ten"
    input_ids, labels = tok.encode_example(prompt, answer, max_len=64)
    p, a = tok.encode_prompt(prompt), tok.encode(answer)
    assert input_ids == p + a + [tok.eos_id]
    assert len(labels) == len(input_ids)
    assert labels[: len(p)] == [IGNORE_INDEX] * len(p)
    assert labels[len(p):] == a + [tok.eos_id] == input_ids[len(p):]
    assert tok.decode_answer(input_ids[len(p):]) == answer


def test_encode_example_truncates_prompt_not_answer(tok):
    prompt = "is the piano louder than the violin? " * 10
    answer = "more than ten"
    a = tok.encode(answer)
    input_ids, labels = tok.encode_example(prompt, answer, max_len=16)
    assert len(input_ids) == len(labels) == 16
    assert input_ids[0] == tok.bos_id
    assert input_ids[-len(a) - 2] == tok.sep_id
    assert input_ids[-len(a) - 1:] == a + [tok.eos_id]
    assert input_ids[1:-len(a) - 2] == tok.encode(prompt)[: 16 - 3 - len(a)]  # beginning kept
    assert sum(x != IGNORE_INDEX for x in labels) == len(a) + 1
    # just fits with an empty prompt; one less does not
    fits = len(a) + 3
    assert len(tok.encode_example(prompt, answer, max_len=fits)[0]) == fits
    with pytest.raises(ValueError, match="does not fit"):
        tok.encode_example(prompt, answer, max_len=fits - 1)


def test_encode_candidates(tok):
    cands = tok.encode_candidates(["red", "red square", "green"])
    assert cands == [tok.encode("red") + [2], tok.encode("red square") + [2], tok.encode("green") + [2]]
    _, labels = tok.encode_example("what color?", "red square", 64)
    assert [x for x in labels if x != IGNORE_INDEX] == cands[1]


def test_decode_skips_specials_and_stops_at_eos(tok):
    ids = [tok.bos_id] + tok.encode("two") + [tok.eos_id] + tok.encode("junk")
    assert tok.decode(ids) == "two junk"
    assert tok.decode_answer(tok.encode("two") + [tok.eos_id, tok.pad_id] + tok.encode("junk")) == "two"


def test_pad_examples(tok):
    ex = [tok.encode_example("what color?", "red", 32), tok.encode_example("how many circles are there?", "two", 32)]
    ids, labels, mask = pad_examples(ex)
    n = max(len(e[0]) for e in ex)
    assert all(len(r) == n for r in ids + labels + mask)
    short = min(range(2), key=lambda i: len(ex[i][0]))
    k = len(ex[short][0])
    assert ids[short][k:] == [0] * (n - k) and labels[short][k:] == [IGNORE_INDEX] * (n - k)
    assert mask[short] == [1] * k + [0] * (n - k)


def test_vocab_size_bounds():
    with pytest.raises(ValueError, match="260"):
        MirasolTokenizer.train(["abc"], vocab_size=100)


def test_train_from_manifests(tmp_path):
    m = tmp_path / "m.jsonl"
    rows = [
        {"id": "1", "video": "a.mp4", "task": "qa", "question": "qué color tiene el cuadrado?", "answer": "rojo",
         "choices": ["rojo", "verde"]},
        {"id": "2", "video": "b.mp4", "task": "caption", "answer": "un perro ladra"},
        {"id": "3", "video": "c.mp4", "task": "classify", "answer": "perro ladrando"},
    ]
    m.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tok = train_tokenizer_from_manifests([m], vocab_size=400)
    vocab = tok.backend.get_vocab()
    assert "Ġrojo" in vocab and "Ġverde" in vocab  # answers and choices are in the training text
    assert "Ġcaption" in vocab and "Ġclassify" in vocab  # the fixed prompts too
    assert train_tokenizer_from_manifests(m, vocab_size=400).to_json() == tok.to_json()
