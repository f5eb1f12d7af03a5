"""HRV computed here: normalisation, a forced head, determinism, resumability, images unchanged."""

import numpy as np
import pytest
import torch

from bench.cache import StageStore
from bench.hrv import HeadVoter, embed_words, hrv_stage, load_concepts, load_hrv, relevance_vectors, target_word_wins
from bench.hrv import main as hrv_main
from bench.prompts import load_prompt_set
from bench.relevance import FileRelevance

PROBE = "data/prompts/hrv_probe.jsonl"
CONCEPTS = "data/concepts/hrv_concepts.json"
STEPS = 2
TARGETS = ["dog", "teddy bear"]


def reference_vectors(votes: np.ndarray, calls: np.ndarray) -> np.ndarray:
    """Independent loop version of HRV's normalisation: per head / calls, per concept L1 x H (0 stays 0)."""
    n_heads, n_cols = votes.shape
    out = np.zeros((n_cols, n_heads))
    for c in range(n_cols):
        share = np.array([votes[h, c] / calls[h] for h in range(n_heads)])
        if share.sum() > 0:
            out[c] = share / share.sum() * n_heads
    return out


def test_relevance_vectors_normalisation():
    votes = np.array([[3, 1, 0], [0, 4, 0], [2, 2, 0], [1, 0, 0]])  # (H=4, C=3); concept 2 never voted for
    got = relevance_vectors(votes)
    np.testing.assert_allclose(got, reference_vectors(votes, votes.sum(1)))
    np.testing.assert_allclose(got[:2].sum(1), 4.0)
    assert got[0].argmax() == 3 and got[1].argmax() == 1  # head 3 votes only concept 0; head 1 only concept 1
    np.testing.assert_array_equal(got[2], np.zeros(4))  # no vote: zeros, as upstream's L1 normalisation leaves it


@pytest.mark.parametrize("with_start", [False, True])
def test_target_word_wins_equals_explicit_softmax(with_start):
    """Word-level column: the 1+C-way competition, computed per word with an explicit softmax (with a start
    token in every softmax's normalisation, or without)."""
    g = torch.Generator().manual_seed(0)
    B, heads, hw, d, C, T, W, T2 = 2, 3, 5, 4, 3, 2, 4, 2
    q = torch.randn(B, heads, hw, d, generator=g)
    k = torch.randn(B, heads, C * T, d, generator=g)
    valid = torch.tensor([[True, False, True, True, True, False]] * B)  # (B, C*T): words of 1, 2, 1 tokens
    n_tok = valid.view(B, C, T).sum(-1).float()[:, None]  # (B, 1, C)
    logits = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~valid[:, None, None], float("-inf"))
    target_keys = torch.randn(W, T2, heads * d, generator=g) * torch.tensor([0.5, 1.0, 2.0, 3.0])[:, None, None]
    target_valid = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    start = torch.randn(B, heads, hw, 1, generator=g) * 3 if with_start else None
    got = target_word_wins(q, logits, target_keys, target_valid, 0.5, n_tok, start)
    want = torch.zeros(B, heads, W, dtype=torch.bool)
    for b in range(B):
        for h in range(heads):
            for w in range(W):
                kw = target_keys[w].view(T2, heads, d)[target_valid[w], h]  # (n_w, d)
                lc = logits[b, h][:, valid[b]]  # (hw, n_c) concept tokens only
                cols = [lc, q[b, h] @ kw.T * 0.5] + ([start[b, h]] if with_start else [])
                p = torch.softmax(torch.cat(cols, dim=-1), dim=-1).mean(0)  # over space; start column last
                seg = torch.repeat_interleave(torch.arange(C), valid[b].view(C, T).sum(-1))
                concept = torch.stack([p[: len(seg)][seg == c].mean() for c in range(C)])
                want[b, h, w] = p[len(seg): len(seg) + int(target_valid[w].sum())].mean() > concept.max()
    assert torch.equal(got, want)
    assert want.any() and not want.all()  # both outcomes occur, so the comparison means something


@pytest.fixture(scope="module")
def probe():
    return load_prompt_set(PROBE, 2)


@pytest.fixture(scope="module")
def first_run(tiny, probe, tmp_path_factory):
    store = StageStore(tmp_path_factory.mktemp("hrv1"), "hrv", {"run": 1}, [])
    stats = hrv_stage(tiny, probe, load_concepts(CONCEPTS), store, STEPS, 5.0, 1, 0, TARGETS)
    return store, stats


def test_stage_votes_and_vectors(tiny, first_run):
    store, stats = first_run
    out = load_hrv(store)
    index = tiny.head_index()
    n_heads = len(index)
    assert stats["batches_computed"] == 2 and out["head_names"] == index.hrv_names()
    assert out["votes"].shape == (n_heads, 34) and out["vectors"].shape == (34, n_heads)
    # every head votes once per (prompt, step): 2 prompts x 2 steps, mid-block heads included
    np.testing.assert_array_equal(out["votes"].sum(1), 2 * STEPS)
    np.testing.assert_array_equal(out["calls"], 2 * STEPS)
    np.testing.assert_allclose(out["vectors"].sum(1), n_heads)
    np.testing.assert_allclose(out["vectors"], reference_vectors(out["votes"], out["calls"]))
    assert out["word_vectors"].shape == (2, n_heads) and out["words"] == TARGETS
    np.testing.assert_allclose(out["word_vectors"].sum(1), n_heads)
    assert (out["word_votes"] <= out["calls"][:, None]).all()
    # the HRV-format files read back through FileRelevance give the same vectors
    rel = FileRelevance(str(store.file("vectors.npy")), str(store.file("head_names.npy")),
                        str(store.file("concepts.json")), {"dog": "Animals"})
    np.testing.assert_allclose(rel.vector("dog", index), out["vectors"][0], rtol=1e-6)


def test_rerun_is_identical_and_resumes_after_a_kill(tiny, probe, first_run, tmp_path, monkeypatch):
    store = StageStore(tmp_path, "hrv", {"run": 2}, [])
    real_generate = type(tiny).generate
    calls = []

    def dies_on_second_batch(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny), "generate", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        hrv_stage(tiny, probe, load_concepts(CONCEPTS), store, STEPS, 5.0, 1, 0, TARGETS)
    assert store.has("votes/000000.pt") and not store.has("votes/000001.pt") and not store.has("hrv.pt")
    stats = hrv_stage(tiny, probe, load_concepts(CONCEPTS), store, STEPS, 5.0, 1, 0, TARGETS)
    assert stats["batches_computed"] == 1 and stats["batches_cached"] == 1
    again, first = load_hrv(store), load_hrv(first_run[0])
    for key in ("votes", "word_votes", "calls"):
        np.testing.assert_array_equal(again[key], first[key])
    np.testing.assert_array_equal(again["vectors"], first["vectors"])


def test_image_unchanged_by_voting(tiny):
    index = tiny.head_index()
    tokens, valid, _ = embed_words(tiny, ["cat", "red", "polka dots"])
    before = np.array(tiny.generate(["a cat on a sofa"], [3], STEPS, 5.0)[0])
    with torch.inference_mode(), HeadVoter(tiny.unet, index, tokens, valid, torch.tensor([0, 1, 2]),
                                           [torch.Generator().manual_seed(0)], tokens[:1], valid[:1]) as voter:
        during = np.array(tiny.generate(["a cat on a sofa"], [3], STEPS, 5.0)[0])
    assert np.array_equal(before, during)
    assert voter.votes.sum() == len(index) * STEPS  # it did vote
    assert not any(m._forward_hooks for m in tiny.unet.modules())


def _encode(model, word: str) -> torch.Tensor:
    """The word's token embeddings as the pipeline embeds a prompt: positions 1..n of encode_prompt."""
    n = len(model.tokenizer(word).input_ids) - 2
    with torch.no_grad():
        embeds = model.pipe.encode_prompt(prompt=[word], device=model.device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)[0]
    return embeds[0, 1: 1 + n].double()  # (n, D)


def test_forced_heads_win_their_concept_and_their_word():
    """Head 1 of the first mid-block layer gets constant queries aligned with the keys of concept "B"'s
    words; head 5 with the keys of the extra target word. They must vote that column at every call."""
    from bench.models import build_tiny_sdxl

    model = build_tiny_sdxl()
    concepts = {"A": ["cat", "dog"], "B": ["violin", "castle"], "C": ["blue", "stripes"]}
    target = "zebra"
    layer = next(lay for lay in model.head_index().layers if lay.block == "mid")
    attn = dict(model.unet.named_modules())[layer.processor.removesuffix(".processor")]
    d = attn.to_q.out_features // attn.heads
    emb = {w: _encode(model, w) for ws in concepts.values() for w in ws} | {target: _encode(model, target)}
    all_tokens = torch.cat(list(emb.values()))  # (N, D), N << D = 96: any split is linearly separable
    rng = torch.Generator().manual_seed(0)
    q_new = torch.nn.Linear(attn.to_q.in_features, attn.to_q.out_features, bias=True)
    with torch.no_grad():
        q_new.weight.copy_(attn.to_q.weight)
        q_new.bias.zero_()
        for head, favoured in ((1, concepts["B"]), (5, [target])):
            rows = slice(head * d, (head + 1) * d)
            wanted = torch.cat([torch.full((len(emb[w]),), 60.0) if w in favoured else torch.zeros(len(emb[w]))
                                for w in emb]).double()
            g = torch.linalg.lstsq(all_tokens, wanted[:, None]).solution[:, 0]  # g . e_t = 60 (favoured) / 0
            a = torch.randn(d, generator=rng).double()
            q_new.weight[rows] = 0.0
            q_new.bias[rows] = a.float()  # constant query a for this head
            attn.to_k.weight[rows] = (torch.outer(a, g) / a.dot(a) * d ** 0.5).float()  # a . k_t * scale = g . e_t
    attn.to_q = q_new
    flat = [w for ws in concepts.values() for w in ws]
    tokens, valid, _ = embed_words(model, flat)
    t_tokens, t_valid, _ = embed_words(model, [target])
    index = model.head_index()
    with torch.inference_mode(), HeadVoter(model.unet, index, tokens, valid, torch.tensor([0, 0, 1, 1, 2, 2]),
                                           [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
                                           t_tokens, t_valid) as voter:
        model.generate(["a photo of a teapot", "a red kite"], [0, 1], STEPS, 5.0)
    h_concept, h_word = layer.offset + 1, layer.offset + 5
    calls = int(voter.calls[h_concept])
    assert calls == 2 * STEPS
    assert voter.votes[h_concept, 1] == calls and voter.word_votes[h_concept, 0] == 0
    assert voter.word_votes[h_word, 0] == calls
    vectors = relevance_vectors(voter.votes.numpy())
    assert vectors[1, h_concept] == vectors[1].max() and vectors[1, h_concept] > 1.0
    word_vector = relevance_vectors(voter.word_votes.numpy(), voter.calls.numpy())[0]
    assert word_vector[h_word] == word_vector.max() > 1.0


def test_cli_help_prints_the_whole_description(capsys):
    with pytest.raises(SystemExit):
        hrv_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "prints the start token's share of the voting softmax per attn2 layer; returns that table." in text
