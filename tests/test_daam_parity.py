"""Parity with the real daam 0.2.0 package on tiny_sdxl with CFG: same pipeline, seed and prompt."""

import numpy as np
import PIL.Image
import pytest
import torch

from bench.aggregate import mean_of_heads, word_head_maps
from bench.cache import StageStore
from bench.generate import generate_stage
from bench.prompts import PromptRow, token_positions
from bench.samples import make_samples
from bench.score import heat_to_mask, normalised_heat

daam = pytest.importorskip("daam", reason="the daam package is a test dependency: run `make setup`")

STEPS, GUIDANCE, SEED = 3, 5.0, 7
CASES = [
    ("a cat sitting on a red sofa", ["cat", "sofa"]),  # single-token words
    ("a motorcycle parked by a fire hydrant", ["fire hydrant"]),  # a word of several tokens
    ("a bird and another bird on a wire", ["bird"]),  # a repeated word
]


@pytest.fixture(scope="module")
def ours(tiny, tmp_path_factory):
    rows = [PromptRow(f"p{i}", prompt, tuple(words), {}) for i, (prompt, words) in enumerate(CASES)]
    samples = make_samples(rows, [SEED], token_positions(tiny.tokenizer, rows))
    store = StageStore(tmp_path_factory.mktemp("stages"), "generate", {"parity": 1}, [])
    generate_stage(tiny, samples, store, STEPS, GUIDANCE, batch_size=3, store_dtype="float32")
    return store, samples


@pytest.mark.parametrize("case", range(len(CASES)))
def test_word_heat_map_matches_daam_trace(tiny, ours, case):
    store, samples = ours
    prompt, words = CASES[case]
    index = tiny.head_index()
    stored = store.load_torch(f"samples/{samples[case].id}.pt")
    image = store.file(f"images/{samples[case].id}.png")
    with daam.trace(tiny.pipe) as tc:
        tiny.pipe(prompt, generator=torch.Generator("cpu").manual_seed(SEED), num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, height=tiny.height, width=tiny.width)
        global_map = tc.compute_global_heat_map()
    pil = PIL.Image.open(image)
    for word in words:
        theirs = global_map.compute_word_heat_map(word)
        head_maps = word_head_maps(stored["maps"], index, stored["words"][word], tiny.heatmap_size)
        mine = mean_of_heads(head_maps, index.daam_mask(tiny.daam_latent_hw))
        assert mine.shape == theirs.heatmap.shape == (64, 64)
        torch.testing.assert_close(mine, theirs.heatmap.float(), atol=1e-4, rtol=0)
        expanded = theirs.expand_as(pil)
        torch.testing.assert_close(normalised_heat(mine, (pil.height, pil.width)), expanded, atol=1e-4, rtol=0)
        binary = theirs.expand_as(pil, threshold=0.4).bool()
        ours_binary = heat_to_mask(mine, (pil.height, pil.width), 0.4)
        assert torch.equal(binary, ours_binary)


def test_fp16_storage_stays_close_to_fp32(tiny, ours):
    store, samples = ours
    index = tiny.head_index()
    stored = store.load_torch(f"samples/{samples[0].id}.pt")
    half = {res: m.half() for res, m in stored["maps"].items()}
    exact = mean_of_heads(word_head_maps(stored["maps"], index, stored["words"]["cat"], 64), index.daam_mask(4096))
    rounded = mean_of_heads(word_head_maps(half, index, stored["words"]["cat"], 64), index.daam_mask(4096))
    assert (exact - rounded).abs().max() / exact.abs().max() < 1e-3
    assert np.isfinite(rounded.numpy()).all()
