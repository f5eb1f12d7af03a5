"""Parity with the real daam 0.2.0 package on tiny_sdxl with CFG: same pipeline, seed and prompt."""

import numpy as np
import pytest
import torch

from bench.aggregate import mean_of_heads, word_head_maps
from bench.generate import generate_stage
from bench.prompts import PromptRow, token_positions
from bench.samples import make_samples
from bench.score import heat_to_mask, normalised_heat
from bench.store import GenerateStore

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
    store = GenerateStore(tmp_path_factory.mktemp("stages"), {"parity": 1}, [])
    generate_stage(tiny, samples, store, STEPS, GUIDANCE, batch_size=3, store_dtype="float32")
    return store, samples


@pytest.mark.parametrize("case", range(len(CASES)))
def test_word_heat_map_matches_daam_trace(tiny, ours, case):
    store, samples = ours
    prompt, words = CASES[case]
    index = tiny.head_index()
    stored = store.sample(samples[case].id)
    with daam.trace(tiny.pipe) as tc:
        tiny.pipe(prompt, generator=torch.Generator("cpu").manual_seed(SEED), num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, height=tiny.height, width=tiny.width)
        global_map = tc.compute_global_heat_map()
    pil = store.image(samples[case].id)
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
    stored = store.sample(samples[0].id)
    half = {res: m.half() for res, m in stored["maps"].items()}
    exact = mean_of_heads(word_head_maps(stored["maps"], index, stored["words"]["cat"], 64), index.daam_mask(4096))
    rounded = mean_of_heads(word_head_maps(half, index, stored["words"]["cat"], 64), index.daam_mask(4096))
    assert (exact - rounded).abs().max() / exact.abs().max() < 1e-3
    assert np.isfinite(rounded.numpy()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_word_heat_map_matches_daam_trace_in_fp16_on_cuda(tmp_path):
    """tiny_sdxl in fp16 on CUDA, our default capture (compiled where Triton is) vs daam.trace on the same
    pipeline: both compute fp16 logits, so the word maps agree within 1% of the map's peak."""
    import dataclasses

    from bench.models import build_tiny_sdxl

    model = build_tiny_sdxl(device="cuda")
    model.pipe.to(torch.float16)
    model = dataclasses.replace(model, dtype=torch.float16)
    prompt, words = CASES[0]
    rows = [PromptRow("p0", prompt, tuple(words), {})]
    samples = make_samples(rows, [SEED], token_positions(model.tokenizer, rows))
    store = GenerateStore(tmp_path, {"parity_fp16": 1}, [])
    generate_stage(model, samples, store, STEPS, GUIDANCE, batch_size=1, store_dtype="float32")
    stored = store.sample(samples[0].id)
    index = model.head_index()
    with daam.trace(model.pipe) as tc:
        model.pipe(prompt, generator=torch.Generator("cpu").manual_seed(SEED), num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, height=model.height, width=model.width)
        global_map = tc.compute_global_heat_map()
    for word in words:
        theirs = global_map.compute_word_heat_map(word).heatmap.float().cpu()
        mine = mean_of_heads(word_head_maps(stored["maps"], index, stored["words"][word], model.heatmap_size),
                             index.daam_mask(model.daam_latent_hw))
        assert torch.isfinite(theirs).all() and theirs.abs().max() > 0
        torch.testing.assert_close(mine, theirs, atol=1e-2 * float(theirs.abs().max()), rtol=0)


def test_daam_without_cfg_averages_only_half_of_each_layers_heads(tiny, tmp_path):
    """daam 0.2.0 drops the first half of the (batch x heads) rows as the unconditional pass; without CFG
    there is none, so it keeps only the second half of every layer's heads. The harness averages all of
    them (DAAM's head set), so here the two differ: recorded, not copied."""
    prompt, words = CASES[0]
    rows = [PromptRow("p0", prompt, tuple(words), {})]
    samples = make_samples(rows, [SEED], token_positions(tiny.tokenizer, rows))
    store = GenerateStore(tmp_path, {"no_cfg": 1}, [])
    generate_stage(tiny, samples, store, STEPS, 1.0, batch_size=1, store_dtype="float32")
    with daam.trace(tiny.pipe) as tc:
        tiny.pipe(prompt, generator=torch.Generator("cpu").manual_seed(SEED), num_inference_steps=STEPS,
                  guidance_scale=1.0, height=tiny.height, width=tiny.width)
        theirs = tc.compute_global_heat_map().compute_word_heat_map("cat").heatmap.float()
    index = tiny.head_index()
    stored = store.sample(samples[0].id)
    head_maps = word_head_maps(stored["maps"], index, stored["words"]["cat"], tiny.heatmap_size)
    daam_heads = index.daam_mask(tiny.daam_latent_hw)
    second_half = np.array([h.head >= index.layer(h.processor).n_heads // 2 for h in index.heads])
    torch.testing.assert_close(mean_of_heads(head_maps, daam_heads & second_half), theirs, atol=1e-4, rtol=0)
    ours = mean_of_heads(head_maps, daam_heads)
    assert (ours - theirs).abs().max() > 1e-2 * theirs.abs().max()
