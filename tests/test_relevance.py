"""Relevance sources: published-vector parity, word -> concept, held-out oracle, random draws, and runs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers import REPO, SHARED_REFERENCE, cfg_for

from bench.aggregate import ranked_heads, word_head_maps
from bench.evaluate import Selective, load_sample, make_context
from bench.figures import load_overlays
from bench.heads import HeadIndex
from bench.models import SD14_UNET_CONFIG, SDXL_UNET_CONFIG
from bench.prompts import load_prompt_set, token_positions
from bench.relevance import (
    FileRelevance,
    OracleRelevance,
    RandomRelevance,
    oracle_relevance,
    prompt_folds,
    read_concept_list,
    read_concept_words,
)
from bench.run import run
from bench.samples import make_samples
from bench.score import heat_to_mask
from bench.segment import WordMask
from bench.store import GenerateStore, MaskStore
from bench.tokenizer import clip_tokenizer

HRV = SHARED_REFERENCE / "hrv"
CONCEPTS = REPO / "data/concepts/hrv_concepts.json"
COCO = REPO / "data/concepts/coco80_to_hrv.json"
SMOKE = ["dataset.limit=3", "dataset.seeds=[0,1]", "model.generation.steps=2", "model.generation.batch_size=6",
         "report.figures=false"]


def meta_index(config: dict, latent: tuple[int, int]) -> HeadIndex:
    with torch.device("meta"):
        return HeadIndex.from_unet(UNet2DConditionModel(**config), latent)


# --- published vectors (../shared/reference/hrv) ------------------------------------------------------------

@pytest.mark.parametrize("model, config, latent, n_heads", [
    ("sd_xl_base_1_0", SDXL_UNET_CONFIG, (128, 128), 1300), ("sd_v1_4", SD14_UNET_CONFIG, (64, 64), 128)])
def test_published_vectors_map_onto_head_index(model, config, latent, n_heads):
    vectors, names = HRV / f"category_vectors_{model}.npy", HRV / f"head_index_{model}.npy"
    if not vectors.exists():
        pytest.skip(f"{vectors} absent: the published HRV vectors live in ../shared/reference")
    index = meta_index(config, latent)
    raw = np.load(vectors)
    file_names = [str(n) for n in np.load(names, allow_pickle=True)]
    rel = FileRelevance(str(vectors), str(names), str(HRV / "340_final_text_list.csv"), {"dog": "Animals"})
    assert raw.shape == (34, n_heads) and rel.concepts[0] == "Animals"
    np.testing.assert_allclose(raw.sum(1), n_heads, rtol=1e-4)  # each row sums to H
    by_name = {h.hrv_name: i for i, h in enumerate(index.heads)}
    assert sorted(by_name[n] for n in file_names) == list(range(n_heads))  # one-to-one onto our heads
    for c, concept in enumerate(rel.concepts):  # every value lands on the head its column names
        expected = np.empty(n_heads)
        expected[[by_name[n] for n in file_names]] = raw[c]
        np.testing.assert_array_equal(rel.concept_vector(concept, index), expected)
    k = round(0.2 * n_heads)
    file_top = {file_names[j] for j in np.argsort(-raw[0], kind="stable")[:k]}
    ours = ranked_heads(rel.vector("dog", index))[:k]
    assert {index.heads[i].hrv_name for i in ours} == file_top
    if n_heads == 1300:  # the published top heads of an object concept span down, mid and up blocks
        assert {index.heads[i].block for i in ours} == {"down", "mid", "up"}


def test_concept_lists_read_upstream_format_and_ours(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_bytes("\ufeffAnimals\r\n\r\n1. Dog\r\n2. Cat\r\n\r\nColor\r\n1. Red\r\n".encode("utf-8"))
    assert read_concept_words(listing) == {"Animals": ["Dog", "Cat"], "Color": ["Red"]}
    assert read_concept_list(listing) == ["Animals", "Color"]
    ours = read_concept_words(CONCEPTS)
    assert len(ours) == 34 and all(len(w) == 10 for w in ours.values())
    if (HRV / "340_final_text_list.csv").exists():  # same concepts, same order as the published vectors' rows
        upstream = read_concept_words(HRV / "340_final_text_list.csv")
        assert list(upstream) == list(ours) and all(len(w) == 10 for w in upstream.values())


def test_coco80_map_covers_80_classes_onto_known_concepts():
    mapping = json.loads(COCO.read_text())
    assert len(mapping) == 80 and set(mapping.values()) <= set(read_concept_list(CONCEPTS))


def test_unknown_word_is_an_error_naming_it(tiny, tmp_path):
    index = tiny.head_index()
    np.save(tmp_path / "v.npy", np.ones((2, len(index)), np.float32))
    np.save(tmp_path / "n.npy", np.array(index.hrv_names()))
    (tmp_path / "c.json").write_text(json.dumps(["Animals", "Vehicles"]))
    rel = FileRelevance(str(tmp_path / "v.npy"), str(tmp_path / "n.npy"), str(tmp_path / "c.json"), str(COCO))
    assert rel.vector("dog", index).shape == (len(index),)
    with pytest.raises(KeyError, match="'spaceship'"):
        rel.vector("spaceship", index)
    with pytest.raises(KeyError, match=r"2 word\(s\) have no concept: \['gizmo', 'spaceship'\]"):
        rel.check_words(["dog", "spaceship", "gizmo"])
    with pytest.raises(KeyError, match="'Furniture'.*'bed'"):  # mapped onto a concept the vectors lack
        rel.check_words(["bed"])


# --- folds and the held-out oracle ---------------------------------------------------------------------------

def test_prompt_folds_keep_seeds_together():
    ids = [f"p{i}" for i in range(7) for _ in range(3)]  # 7 prompts x 3 seeds
    folds = prompt_folds(ids, 3, seed=1)
    assert set(folds) == set(ids) and sorted(np.bincount(list(folds.values()))) == [2, 2, 3]
    assert prompt_folds(ids, 3, seed=1) == folds
    with pytest.raises(ValueError, match="2 <= folds <= number of prompts"):
        prompt_folds(ids, 8)



def open_store(path: Path) -> GenerateStore | MaskStore:
    """A stage folder written by a run, reopened from its own stage.json (same key, same path)."""
    meta = json.loads((path / "stage.json").read_text())
    store = {"generate": GenerateStore, "segment": MaskStore}[meta["stage"]](path.parents[1], meta["config"],
                                                                              meta["inputs"])
    assert store.path == path
    return store


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("stages")


@pytest.fixture(scope="module")
def random_run(shared_cache, tmp_path_factory):
    """One smoke run (3 prompts x 2 seeds) with the random control (3 draws); its cache serves the others."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        mp.setenv("BENCH_CACHE_DIR", str(shared_cache))
        run_dir = tmp_path_factory.mktemp("random_run")
        summary = run(cfg_for(SMOKE + ["relevance=random", "relevance.draws=3"]), run_dir)
    return summary, pd.read_csv(run_dir / "scores.csv"), (run_dir / "summary.md").read_text()


def test_random_draws_rows_and_spread(random_run):
    summary, table, md = random_run
    daam = table[table["method"] == "daam"]
    assert daam["draw"].isna().all() and not daam.duplicated(["sample_id", "word"]).any()  # scored once
    sel = table[(table["method"] == "selective") & (table["variant"] == "k=25%")]
    assert sorted(sel["draw"].unique()) == [0, 1, 2] and len(sel) == 3 * len(daam)
    per_draw = sel.groupby("draw")["iou"].mean()
    row = summary[(summary["method"] == "selective") & (summary["variant"] == "k=25%")].iloc[0]
    assert row["n_draws"] == 3 and row["n_pairs"] == len(daam)
    assert row["mIoU"] == pytest.approx(per_draw.mean()) and row["std_draws"] == pytest.approx(per_draw.std())
    assert per_draw.std() > 0  # the draws are different rankings
    assert row["relevance"] == "random[3 draws]" and "random (seed 0, 3 draw(s)" in md


def test_oracle_folds_are_held_out(random_run, shared_cache, monkeypatch):
    """Each fold's relevance is the mean per-head IoU over the other folds' pairs only (independent
    recomputation), and changing the held-out fold's masks changes neither its relevance nor its tau."""
    gen_store = open_store(next(shared_cache.glob("generate/*/stage.json")).parent)
    mask_store = open_store(next(shared_cache.glob("segment/*/stage.json")).parent)
    rows = load_prompt_set(REPO / "data/smoke/prompts.jsonl", 3)
    index = gen_store.head_index()
    samples = make_samples(rows, [0, 1], token_positions(clip_tokenizer(), rows))
    folds = oracle_relevance(samples, gen_store, mask_store, n_folds=3, taus=[0.3, 0.5], seed=0)
    assert sorted(s.id for f in folds for s in f.held_out) == sorted(s.id for s in samples)
    for f in folds:  # a prompt's seeds stay in one fold
        assert all(len({s.seed for s in f.held_out if s.row.id == p}) == 2 for p in {s.row.id for s in f.held_out})

    def per_head_iou(sample, word, tau):
        stored = gen_store.sample(sample.id)
        ref = mask_store.masks(sample.id)[word].mask
        size = gen_store.geometry().heatmap_size
        maps = word_head_maps(stored["maps"], index, stored["words"][word], size)
        pred = heat_to_mask(maps, ref.shape, tau).numpy()
        return (pred & ref).sum((1, 2)) / (pred | ref).sum((1, 2))

    for f in folds:
        calib = [(s, w) for g in folds if g is not f for s in g.held_out for w in s.row.words]
        for word in {w for s in f.held_out for w in s.row.words}:
            mine = [(s, w) for s, w in calib if w == word] or calib
            want = np.mean([per_head_iou(s, w, f.tau) for s, w in mine], axis=0)
            np.testing.assert_allclose(f.relevance.vector(word, index), want, atol=1e-12)

    real = mask_store.masks
    held = {s.id for s in folds[0].held_out}
    rng = np.random.default_rng(0)

    def scrambled(sample_id):
        masks = real(sample_id)
        if sample_id in held:
            masks = {w: WordMask(rng.random(m.mask.shape) > 0.5) if m.mask is not None else m for w, m in masks.items()}
        return masks

    monkeypatch.setattr(mask_store, "masks", scrambled)
    again = oracle_relevance(samples, gen_store, mask_store, n_folds=3, taus=[0.3, 0.5], seed=0)
    word = folds[0].held_out[0].row.words[0]
    assert again[0].tau == folds[0].tau
    np.testing.assert_array_equal(again[0].relevance.vector(word, index), folds[0].relevance.vector(word, index))
    assert any(not np.array_equal(again[i].relevance.fallback, folds[i].relevance.fallback) for i in (1, 2))


def test_oracle_run_marks_folds(random_run, shared_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(shared_cache))
    summary = run(cfg_for(SMOKE + ["relevance=oracle", "relevance.taus=[0.3,0.5]"]), tmp_path)
    table = pd.read_csv(tmp_path / "scores.csv")
    assert table.groupby("sample_id")["fold"].nunique().eq(1).all()  # each sample scored in one fold only
    assert table.groupby("prompt_id")["fold"].nunique().eq(1).all()
    assert set(table["tau"]) <= {0.3, 0.5} and table.groupby("fold")["tau"].nunique().eq(1).all()
    assert set(summary["n_folds"]) == {3}
    md = (tmp_path / "summary.md").read_text()
    assert "chosen on calibration folds, scored on held-out folds" in md and "oracle[3 folds, held-out]" in md
    assert json.loads((tmp_path / "stats.json").read_text())["generate"]["generated"] == 0

    # fig_overlays shows the heads each held-out fold chose, masked at that fold's tau (recorded while scoring)
    gen_store = open_store(next(shared_cache.glob("generate/*/stage.json")).parent)
    mask_store = open_store(next(shared_cache.glob("segment/*/stage.json")).parent)
    rows = load_prompt_set(REPO / "data/smoke/prompts.jsonl", 3)
    samples = make_samples(rows, [0, 1], token_positions(clip_tokenizer(), rows))
    folds = oracle_relevance(samples, gen_store, mask_store, n_folds=3, taus=[0.3, 0.5], seed=0)
    items = load_overlays(tmp_path / "overlays.npz")["items"]
    assert items
    for item in items:
        fold = next(f for f in folds if item["sample_id"] in {s.id for s in f.held_out})
        sample = next(s for s in samples if s.id == item["sample_id"])
        ctx, _ = load_sample(sample, gen_store, mask_store, make_context(gen_store, fold.relevance))
        want = Selective("25%").heat_maps(ctx.word_maps[item["word"]], item["word"], ctx)["k=25%"][1]
        cell = item["maps"]["selective k=25%"]
        np.testing.assert_array_equal(cell["heat"], want.numpy())
        assert cell["tau"] == fold.tau == table.loc[table["sample_id"] == sample.id, "tau"].iloc[0]


def test_hrv_run_end_to_end(random_run, shared_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(shared_cache))
    summary = run(cfg_for(SMOKE + ["relevance=hrv", "relevance.probe_limit=2"]), tmp_path)
    sel = summary[summary["method"] == "selective"]
    assert set(sel["relevance"]) == {"hrv[hrv_probe n=2 x 2 steps]"} and sel["diff_vs_daam"].notna().all()
    md = (tmp_path / "summary.md").read_text()
    assert "hrv (computed here, label-free: 2 probe prompts from data/prompts/hrv_probe.jsonl x 2 steps" in md
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["relevance"]["hrv"]["batches_computed"] == 1
    assert len(list(shared_cache.glob("hrv/*/votes/*.pt"))) == 1 and list(shared_cache.glob("hrv/*/vectors.npy"))


def test_unknown_word_fails_before_generation(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "a spaceship on a sofa", "words": ["spaceship", "sofa"]}\n')
    import bench.models
    monkeypatch.setattr(bench.models.T2IModel, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(KeyError, match=r"1 word\(s\) have no concept: \['spaceship'\]"):
        run(cfg_for([f"dataset.path={prompts}", "relevance=hrv"]), tmp_path / "run")


def test_oracle_and_random_reject_bad_settings():
    with pytest.raises(ValueError, match="folds must be >= 2"):
        OracleRelevance(folds=1)
    with pytest.raises(ValueError, match="scope must be word or pooled"):
        OracleRelevance(scope="global")
    with pytest.raises(ValueError, match="draws must be >= 1"):
        RandomRelevance(draws=0)
