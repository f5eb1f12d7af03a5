import json

import pytest

from bench.prompts import load_prompt_set, token_positions, word_token_positions
from bench.tokenizer import clip_tokenizer


def test_real_clip_ids_offline():
    assert clip_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("prompt, word", [
    ("a cat sitting on a red sofa", "cat"),
    ("a bird and another bird on a wire", "bird"),
    ("a motorcycle parked by a fire hydrant", "fire hydrant"),
    ("A Teddy Bear on a bed", "teddy bear"),
    ("a photo of a hairdrier", "hairdrier"),
])
def test_positions_match_daam(prompt, word):
    daam_utils = pytest.importorskip("daam.utils", reason="daam is a test dependency: run `make setup`")
    tok = clip_tokenizer()
    want, _ = daam_utils.compute_token_merge_indices(tok, prompt, word)
    assert word_token_positions(tok, prompt, word) == want


def test_missing_words_listed_before_generation(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "a cat", "words": ["cat", "dog"]},
        {"id": "b", "prompt": "a bowl", "words": ["bowl"]},
        {"id": "c", "prompt": "two cars", "words": ["truck"]},
    ]))
    rows = load_prompt_set(path)
    with pytest.raises(ValueError) as err:
        token_positions(clip_tokenizer(), rows)
    msg = str(err.value)
    assert msg.startswith("2 word(s) not found") and "a: 'dog'" in msg and "c: 'truck'" in msg


def test_prompt_set_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.path"):
        load_prompt_set(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "prompt": "a cat"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: row needs id, prompt and a non-empty words"):
        load_prompt_set(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join(json.dumps({"id": "a", "prompt": "a cat", "words": ["cat"]}) for _ in range(2)))
    with pytest.raises(ValueError, match="dup.jsonl:2: id 'a' repeats the id of line 1"):
        load_prompt_set(dup)
