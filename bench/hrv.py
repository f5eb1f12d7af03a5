"""Head relevance vectors (HRV, Park et al. ICLR 2025) computed here, label-free.

While the model draws neutral probe prompts, at every cross-attention call and step each conditional
row samples one word per concept; the words' token embeddings (each word embedded alone, as the
pipeline embeds a prompt) go through that layer's own `to_k`; `softmax(Q_cond K^T * scale)` over
the start token of the first concept's sampled word followed by those concept tokens is averaged over
space and over each word's tokens, and every head votes for its argmax concept (the start token takes
part in the normalisation only, as upstream's code does). Votes are summed over prompts and steps,
normalised per head over concepts, then per concept L1-normalised over heads and multiplied by H (each
vector sums to H; a concept that never wins gets zeros, as upstream's L1 normalisation leaves it).

The generation itself uses the real prompt: `HeadVoter` wraps each attn2 processor (the original
computes the output, unchanged), reading the layer's queries from a `to_q` forward hook.

Word-level variant: each target word is an extra column competing with the concepts' sampled words
(35-way argmax per word); its vector is the share of calls where the word wins, L1-normalised x H.

Variant of this project: `start_token=False` leaves the start token out of the softmax. Whatever the
choice, the start token's mean share of that softmax is recorded per head (`start_share`, per layer in
`start_share.csv`; `python -m bench.hrv [overrides]` prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import PNDMScheduler
from diffusers.models.attention_processor import Attention
from tqdm import tqdm

from bench.cache import StageStore, write_atomic
from bench.capture import Attn2Hooks
from bench.heads import HeadIndex
from bench.models import T2IModel
from bench.prompts import MAX_TEXT_TOKENS, PromptRow, load_prompt_set, prompt_set_hash
from bench.relevance import ConceptRelevance, read_concept_words

# --- concept words and their embeddings --------------------------------------------------------------------


def load_concepts(path: str | Path) -> dict[str, list[str]]:
    """{concept: words} from our JSON or HRV's numbered list; every concept needs at least one word."""
    concepts = read_concept_words(path)
    empty = [c for c, words in concepts.items() if not words]
    if not concepts or empty:
        raise ValueError(f"{path}: every concept needs words (empty: {empty[:5]})")
    return concepts


def embed_words(model: T2IModel, words: list[str],
                chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each word embedded alone by the pipeline's `encode_prompt`; keeps its own tokens (no start / end).

    Returns fp32 (N, T, D) token embeddings, padded to the longest word's T tokens, bool (N, T) validity
    and fp32 (N, D) each word's start-token embedding (position 0 of its encoding).
    """
    n_tokens = [len(model.tokenizer(w).input_ids) - 2 for w in words]
    bad = [w for w, n in zip(words, n_tokens) if not 1 <= n <= MAX_TEXT_TOKENS]
    if bad:
        raise ValueError(f"words with no tokens or too many: {bad}")
    embeds = []
    with torch.inference_mode():
        for start in range(0, len(words), chunk):
            embeds.append(model.condition(words[start: start + chunk])["encoder_hidden_states"].float())  # (n, 77, D)
    embeds = torch.cat(embeds)
    t_max = max(n_tokens)
    tokens = torch.zeros(len(words), t_max, embeds.shape[-1], device=embeds.device)
    valid = torch.zeros(len(words), t_max, dtype=torch.bool, device=embeds.device)
    for i, n in enumerate(n_tokens):
        tokens[i, :n] = embeds[i, 1: 1 + n]
        valid[i, :n] = True
    return tokens, valid, embeds[:, 0].clone()


# --- voting ------------------------------------------------------------------------------------------------


class HeadVoter(Attn2Hooks):
    """Context manager: at every attn2 call, each conditional row's heads vote for one concept.

    concept_tokens / concept_valid: (N_w, T, D) / (N_w, T) embeddings of every concept word;
    word_concept: (N_w,) concept id of each; generators: one per batch row (word sampling);
    target_tokens / target_valid: (W, T', D) / (W, T') extra word columns, or None;
    start_tokens: (N_w, D) each concept word's start-token embedding, or None (no start token at all);
    start_token: whether the first concept's sampled word's start token joins the voting softmax (upstream).
    After the pass: `votes` (H, C) int64, `word_votes` (H, W) int64, `calls` (H,) int64 and `start_share`
    (H,) float64, the start token's softmax share summed over calls (NaN without start_tokens), HeadIndex order.
    """

    def __init__(self, unet: torch.nn.Module, head_index: HeadIndex, concept_tokens: torch.Tensor,
                 concept_valid: torch.Tensor, word_concept: torch.Tensor, generators: list[torch.Generator],
                 target_tokens: torch.Tensor | None = None, target_valid: torch.Tensor | None = None,
                 start_tokens: torch.Tensor | None = None, start_token: bool = True):
        super().__init__(unet, head_index)
        self.start_tokens = start_tokens
        self.start_token = start_token and start_tokens is not None
        self.generators = generators
        self.batch_size = len(generators)
        self.concept_tokens, self.concept_valid = concept_tokens, concept_valid
        self.n_concepts = int(word_concept.max()) + 1
        # (C, max words) word ids per concept, padded with the concept's first word; (C,) word counts
        per_concept = [torch.nonzero(word_concept == c).flatten() for c in range(self.n_concepts)]
        self.n_words = torch.tensor([len(w) for w in per_concept])
        if (self.n_words == 0).any():
            raise ValueError("every concept needs at least one word")
        self.word_ids = torch.stack([F.pad(w, (0, int(self.n_words.max()) - len(w)), value=int(w[0]))
                                     for w in per_concept])
        self.target_tokens, self.target_valid = target_tokens, target_valid
        n_targets = 0 if target_tokens is None else len(target_tokens)
        self.votes = torch.zeros(len(head_index), self.n_concepts, dtype=torch.int64)
        self.word_votes = torch.zeros(len(head_index), n_targets, dtype=torch.int64)
        self.calls = torch.zeros(len(head_index), dtype=torch.int64)
        no_share = float("nan") if start_tokens is None else 0.0
        self.start_share = torch.full((len(head_index),), no_share, dtype=torch.float64)
        self._keys: dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = {}

    def _layer_keys(self, key: str, attn: Attention) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This layer's to_k of every concept word (N_w, T, heads*d), target word and start token (N_w,
        heads*d), fp32, computed once."""
        if key not in self._keys:
            dtype = attn.to_k.weight.dtype

            def to_k(x: torch.Tensor | None) -> torch.Tensor | None:
                return None if x is None else attn.to_k(x.to(dtype)).float()

            self._keys[key] = (to_k(self.concept_tokens), to_k(self.target_tokens), to_k(self.start_tokens))
        return self._keys[key]

    def _sample(self, device: torch.device) -> torch.Tensor:
        """(B, C) word ids: one word per concept for each row, from the row's own generator."""
        u = torch.stack([torch.rand(self.n_concepts, generator=g) for g in self.generators])  # (B, C)
        pick = (u * self.n_words).long().clamp_(max=self.n_words - 1)
        return self.word_ids.gather(1, pick.T).T.contiguous().to(device)  # (B, C)

    def _record(self, key: str, attn: Attention) -> None:
        """One vote per head and conditional row: the concept its queries attend to most."""
        q = self._qk[key].pop("q")  # (N, hw, heads*d); the prompt's keys are not needed
        self._qk[key].pop("k")
        n_rows, hw, _ = q.shape
        if n_rows not in (self.batch_size, 2 * self.batch_size):
            raise RuntimeError(f"{key}: UNet batch {n_rows} is neither B={self.batch_size} nor 2B (CFG)")
        B, heads, C = self.batch_size, attn.heads, self.n_concepts
        q = q[n_rows - B:].float().view(B, hw, heads, -1).transpose(1, 2)  # (B, heads, hw, d) conditional rows
        keys, target_keys, start_keys = self._layer_keys(key, attn)
        choice = self._sample(q.device)  # (B, C)
        T = keys.shape[1]
        k = keys[choice].view(B, C * T, heads, -1).transpose(1, 2)  # (B, heads, C*T, d)
        valid = self.concept_valid[choice].view(B, 1, 1, C * T)  # (B, 1, 1, C*T)
        n_tok = self.concept_valid[choice].sum(-1).float()[:, None]  # (B, 1, C)
        logits = (q @ k.transpose(-1, -2) * attn.scale).masked_fill(~valid, float("-inf"))  # (B, heads, hw, C*T)
        layer = self.head_index.layer(key)
        rows = slice(layer.offset, layer.offset + heads)
        start_logits = None
        if start_keys is not None:  # the start token of concept 0's sampled word, before the concept tokens
            ks = start_keys[choice[:, 0]].view(B, 1, heads, -1).transpose(1, 2)  # (B, heads, 1, d)
            start_logits = q @ ks.transpose(-1, -2) * attn.scale  # (B, heads, hw, 1)
            with_start = torch.softmax(torch.cat([start_logits, logits], dim=-1), dim=-1)  # (B, heads, hw, 1+C*T)
            self.start_share[rows] += with_start[..., 0].mean(2).sum(0).double().cpu()
        if self.start_token:
            probs = with_start[..., 1:].mean(2)  # (B, heads, C*T): mean over space
        else:
            probs = torch.softmax(logits, dim=-1).mean(2)
            start_logits = None
        scores = probs.view(B, heads, C, T).sum(-1) / n_tok  # (B, heads, C): mean over each word's tokens
        self.votes[rows] += F.one_hot(scores.argmax(-1).cpu(), C).sum(0)
        self.calls[rows] += B
        if target_keys is not None:
            wins = target_word_wins(q, logits, target_keys, self.target_valid, attn.scale, n_tok,
                                    start_logits)  # (B, heads, W)
            self.word_votes[rows] += wins.sum(0).cpu()


def target_word_wins(q: torch.Tensor, logits: torch.Tensor, target_keys: torch.Tensor, target_valid: torch.Tensor,
                     scale: float, n_tok: torch.Tensor, start_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (B, heads, W): does target word w win its own softmax over the sampled concept tokens plus w's
    tokens (argmax over the C concepts and w of the spatial mean, token-averaged; a tie goes to the concept)?

    q (B, heads, hw, d); logits (B, heads, hw, C*T) of the concept tokens (-inf on padding); target_keys
    (W, T', heads*d) and target_valid (W, T'); n_tok (B, 1, C) tokens of each sampled concept word;
    start_logits (B, heads, hw, 1): a start token in every softmax's normalisation, or None.
    """
    B, heads, hw, _ = q.shape
    C = n_tok.shape[-1]
    W, T2 = target_valid.shape
    kw = target_keys.reshape(W, T2, heads, -1)  # (W, T', heads, d)
    lw = torch.einsum("bhpd,wthd->bhpwt", q, kw) * scale  # (B, heads, hw, W, T')
    lw = lw.masked_fill(~target_valid, float("-inf"))
    m = torch.maximum(logits.amax(-1), lw.flatten(-2).amax(-1))  # (B, heads, hw), for stability
    if start_logits is not None:
        m = torch.maximum(m, start_logits[..., 0])
    ec = torch.exp(logits - m[..., None])  # (B, heads, hw, C*T)
    ew = torch.exp(lw - m[..., None, None])  # (B, heads, hw, W, T')
    zc, zw = ec.sum(-1), ew.sum(-1)  # (B, heads, hw), (B, heads, hw, W)
    if start_logits is not None:
        zc = zc + torch.exp(start_logits[..., 0] - m)
    r = 1.0 / (zc[..., None] + zw)  # (B, heads, hw, W): each word's softmax denominator
    per_concept = ec.view(B, heads, hw, C, -1).sum(-1) / n_tok[:, :, None]  # (B, heads, hw, C)
    s_concept = torch.einsum("bhpw,bhpc->bhwc", r, per_concept) / hw  # (B, heads, W, C)
    s_word = (zw * r).mean(2) / target_valid.sum(-1)  # (B, heads, W)
    return s_word > s_concept.amax(-1)


def relevance_vectors(votes: np.ndarray, calls: np.ndarray | None = None) -> np.ndarray:
    """(H, C) vote counts -> (C, H) vectors: per head share of its votes (of `calls` when given), then per
    column L1 over heads x H. A column with no votes stays zeros (upstream's L1 normalisation)."""
    votes = votes.astype(np.float64)
    per_head = (calls if calls is not None else votes.sum(1)).astype(np.float64)[:, None]
    share = np.divide(votes, per_head, out=np.zeros_like(votes), where=per_head > 0)  # (H, C)
    total = share.sum(0)  # (C,)
    n_heads = votes.shape[0]
    out = np.zeros((votes.shape[1], n_heads))
    has = total > 0
    out[has] = share[:, has].T / total[has, None] * n_heads
    return out


# --- the stage -----------------------------------------------------------------------------------------------


def _sub_seed(seed: int, index: int, stream: str) -> int:
    return int(hashlib.sha256(f"{stream}:{seed}:{index}".encode()).hexdigest()[:8], 16)


def load_probe(path: str | Path, limit: int | None = None) -> list[PromptRow]:
    """Probe prompts from a JSONL prompt set or a text file with one prompt a line (HRV's prompt lists)."""
    path = Path(path)
    if path.suffix != ".txt":
        return load_prompt_set(path, limit)
    if not path.exists():
        raise FileNotFoundError(f"probe prompt list {path} does not exist: set relevance.probe")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    rows = [PromptRow(f"line{n:05d}", line, (), {}) for n, line in enumerate(lines, 1)]
    return rows[:limit] if limit else rows


@contextlib.contextmanager
def generation_settings(model: T2IModel, scheduler: str | None, dtype: str | None):
    """Within the block the pipeline uses `scheduler` ("pndm": PNDM as HRV's SDXL script sets it, the model's
    betas; null: the model's own) and `dtype` ("float32" / "float16", null: the model's); restored after."""
    pipe, old_scheduler, old_dtype = model.pipe, model.pipe.scheduler, model.unet.dtype
    if scheduler not in (None, "pndm"):
        raise ValueError(f"relevance.scheduler must be null or pndm, got {scheduler!r}")
    if dtype not in (None, "float32", "float16"):
        raise ValueError(f"relevance.dtype must be null, float32 or float16, got {dtype!r}")
    if scheduler == "pndm":
        pipe.scheduler = PNDMScheduler.from_config(old_scheduler.config, skip_prk_steps=True, set_alpha_to_one=False,
                                                   steps_offset=1)
    if dtype:
        pipe.to(getattr(torch, dtype))
    try:
        yield
    finally:
        pipe.scheduler = old_scheduler
        if dtype:
            pipe.to(old_dtype)


def hrv_stage(model: T2IModel, probe: list[PromptRow], concepts: dict[str, list[str]], store: StageStore,
              steps: int, guidance_scale: float, batch_size: int, seed: int = 0,
              words: list[str] | None = None, start_token: bool = True, scheduler: str | None = None,
              dtype: str | None = None) -> dict:
    """Vote over the probe prompts in batches (one partial file per batch: a killed run resumes), then
    write `hrv.pt` (votes, vectors, HRV head names, start-token shares), `vectors.npy` / `head_names.npy`
    (HRV's format) and `start_share.csv` (per layer). The generation runs under `generation_settings`."""
    head_index = model.head_index()
    store.bind_head_index(head_index)
    words = list(words or [])
    names = list(concepts)
    starts = list(range(0, len(probe), batch_size))
    todo = [s for s in starts if not store.has(f"votes/{s:06d}.pt")]  # a corrupt batch file is recomputed
    if todo or not store.has("hrv.pt"):
        flat = [(c, w) for c, ws in enumerate(concepts.values()) for w in ws]
        with generation_settings(model, scheduler, dtype):
            tokens, valid, start_tokens = embed_words(model, [w for _, w in flat])
            word_concept = torch.tensor([c for c, _ in flat])
            targets = embed_words(model, words)[:2] if words else (None, None)
            for start in tqdm(todo, desc="hrv votes", unit="batch", disable=not todo):
                batch = probe[start: start + batch_size]
                idx = range(start, start + len(batch))
                gens = [torch.Generator("cpu").manual_seed(_sub_seed(seed, i, "words")) for i in idx]
                with torch.inference_mode(), HeadVoter(model.unet, head_index, tokens, valid, word_concept, gens,
                                                       *targets, start_tokens, start_token) as voter:
                    model.generate([r.prompt for r in batch], [_sub_seed(seed, i, "noise") for i in idx], steps,
                                   guidance_scale)
                store.save_torch(f"votes/{start:06d}.pt", {
                    "votes": voter.votes, "word_votes": voter.word_votes, "calls": voter.calls,
                    "start_share": voter.start_share, "prompt_ids": [r.id for r in batch]})
        parts = [store.load_torch(f"votes/{s:06d}.pt") for s in starts]
        votes = sum(p["votes"] for p in parts).numpy()
        word_votes = sum(p["word_votes"] for p in parts).numpy()
        calls = sum(p["calls"] for p in parts).numpy()
        start_share = (sum(p["start_share"] for p in parts).numpy() / np.maximum(calls, 1))  # (H,) mean per call
        vectors = relevance_vectors(votes)
        arrays = {"votes": votes, "vectors": vectors, "word_votes": word_votes,
                  "word_vectors": relevance_vectors(word_votes, calls), "calls": calls, "start_share": start_share}
        store.save_torch("hrv.pt", {  # tensors, not numpy arrays: what torch.load(weights_only=True) reads
            **{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, "concepts": names,
            "head_names": head_index.hrv_names(), "words": words, "start_token": start_token,
            "n_prompts": len(probe), "steps": steps})
        _save_npy(store, "vectors.npy", vectors.astype(np.float32))
        _save_npy(store, "head_names.npy", np.array(head_index.hrv_names()))
        store.save_json("concepts.json", concepts)
        write_atomic(store.file("start_share.csv"),
                     start_share_by_layer(start_share, head_index).to_csv(index=False).encode())
    return {"batches_computed": len(todo), "batches_cached": len(starts) - len(todo), "key": store.key}


def load_hrv(store: StageStore) -> dict:
    """`hrv.pt` as `hrv_stage` wrote it, its tensors as numpy arrays."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in store.load_torch("hrv.pt").items()}


def start_share_by_layer(start_share: np.ndarray, head_index: HeadIndex) -> pd.DataFrame:
    """Per attn2 layer: the start token's share of the voting softmax (mean over calls, conditional rows and
    space), its mean / min / max over the layer's heads. start_share: (H,) per head, HeadIndex order."""
    rows = []
    for lay in head_index.layers:
        share = start_share[lay.offset: lay.offset + lay.n_heads]
        rows.append({"block": lay.block, "layer": lay.layer, "resolution": f"{lay.resolution[0]}x{lay.resolution[1]}",
                     "heads": lay.n_heads, "start_share": float(share.mean()), "min_head": float(share.min()),
                     "max_head": float(share.max())})
    return pd.DataFrame(rows)


def _save_npy(store: StageStore, name: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    store.write(name, buf.getvalue())


class HRVRelevance(ConceptRelevance):
    """`relevance=hrv` (level=concept: a word's concept vector) / `hrv_word` (level=word: the word's own
    column), computed here by the cached `hrv` stage on neutral probe prompts. start_token=False (the
    project's variant, named `..._nostart`) leaves the start token out of the voting softmax; scheduler /
    dtype set the probe generation's (see `generation_settings`)."""

    name = "hrv"

    def __init__(self, concepts: str, probe: str, steps: int, guidance_scale: float, batch_size: int = 4,
                 probe_limit: int | None = None, seed: int = 0, level: str = "concept",
                 word_to_concept: dict | str | list | None = None, default_concept: str | None = None,
                 start_token: bool = True, scheduler: str | None = None, dtype: str | None = None):
        if level not in ("concept", "word"):
            raise ValueError(f"relevance.level must be concept or word, got {level!r}")
        if not isinstance(start_token, bool):
            raise ValueError(f"relevance.start_token must be true or false, got {start_token!r}")
        super().__init__(word_to_concept, default_concept)
        self.concept_path, self.probe_path = str(concepts), str(probe)
        self.concept_words = load_concepts(concepts)
        self.concepts = list(self.concept_words)
        self.probe = load_probe(probe, probe_limit)
        self.steps, self.guidance_scale, self.batch_size = int(steps), float(guidance_scale), int(batch_size)
        self.seed, self.level = int(seed), level
        self.start_token, self.scheduler, self.dtype = start_token, scheduler, dtype
        self.name = ("hrv" if level == "concept" else "hrv_word") + ("" if start_token else "_nostart")
        self.words: list[str] = []
        self.word_vectors: np.ndarray | None = None
        self.start_share: np.ndarray | None = None
        self.key = ""

    def check_words(self, words: list[str]) -> None:
        if self.level == "concept":
            super().check_words(words)

    def prepare(self, model: T2IModel, cache_root: str, model_config: dict, words: list[str]) -> dict:
        targets = sorted(set(words)) if self.level == "word" else []
        config = {"model": model_config, "steps": self.steps, "guidance_scale": self.guidance_scale,
                  "batch_size": self.batch_size, "seed": self.seed, "concepts": self.concept_words,
                  "words": targets, "start_token": self.start_token, "scheduler": self.scheduler,
                  "dtype": self.dtype}
        store = StageStore(cache_root, "hrv", config, [prompt_set_hash(self.probe)])
        stats = hrv_stage(model, self.probe, self.concept_words, store, self.steps, self.guidance_scale,
                          self.batch_size, self.seed, targets, self.start_token, self.scheduler, self.dtype)
        result = load_hrv(store)
        self.vectors, self.head_names = result["vectors"], result["head_names"]
        self.words, self.word_vectors = result["words"], result["word_vectors"]
        self.start_share = result["start_share"]
        self.key = store.key
        return stats

    def vector(self, word: str, head_index: HeadIndex) -> np.ndarray:
        if self.level == "concept":
            return super().vector(word, head_index)
        if word not in self.words:
            raise KeyError(f"word {word!r} has no word-level vector (computed for {self.words})")
        return self._in_index_order(self.word_vectors[self.words.index(word)], head_index)

    def describe(self) -> str:
        what = ("a word's vector is its concept's (relevance.word_to_concept)" if self.level == "concept"
                else "word level: each target word an extra column beside the concepts")
        start = ("start token in the softmax, as upstream" if self.start_token
                 else "start token left out of the softmax (relevance.start_token=false, this project's variant)")
        if self.start_share is not None:
            start += f"; its mean share of the softmax {np.mean(self.start_share):.3f} (per layer: start_share.csv)"
        generation = "".join(f", {v}" for v in (self.scheduler, self.dtype) if v)
        return (f"{self.name} (computed here, label-free: {len(self.probe)} probe prompts from {self.probe_path} "
                f"x {self.steps} steps{generation}, CFG {self.guidance_scale}, seed {self.seed}; "
                f"{len(self.concepts)} concepts x {sum(map(len, self.concept_words.values()))} words from "
                f"{self.concept_path}; {what}; {start}; cache hrv/{self.key})")

    def label(self) -> str:
        start = "" if self.start_token else ", no start token"
        return f"{self.name}[{Path(self.probe_path).stem} n={len(self.probe)} x {self.steps} steps{start}]"


# --- command line: the start token's share per layer ------------------------------------------------------------


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """`python -m bench.hrv [overrides]`: computes (or reads from the cache) the configured HRV and prints
    the start token's share of the voting softmax per attn2 layer; returns that table."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from bench import CONF_DIR, USER_ERRORS
    from bench.run import build

    parser = argparse.ArgumentParser(prog="python -m bench.hrv", description=" ".join(main.__doc__.split()))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=sdxl_random relevance.probe_limit=8"
                                                     " (relevance=hrv unless one is given)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if not any(o.startswith("relevance=") for o in overrides):
        overrides.insert(0, "relevance=hrv")
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # paths.cache reads hydra:runtime.cwd
        relevance = build(cfg.relevance)
        if not isinstance(relevance, HRVRelevance):
            raise ValueError(f"relevance={cfg.relevance._target_} has no start token: use relevance=hrv (or a preset "
                             "built on it, e.g. hrv_shapes)")
        model = build(cfg.model.loader)
        relevance.prepare(model, cfg.paths.cache, {**OmegaConf.to_container(cfg.model.loader),
                                                   "weights": model.fingerprint}, [])
    except USER_ERRORS as err:
        raise SystemExit(f"error: {err}") from None
    table = start_share_by_layer(relevance.start_share, model.head_index())
    print(f"# start token's share of the HRV voting softmax per attn2 layer\n- relevance: {relevance.describe()}\n")
    print(table.to_markdown(index=False, floatfmt=".4f"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    import bench.hrv  # run the importable module's main: its HRVRelevance is the class Hydra instantiates

    bench.hrv.main()
