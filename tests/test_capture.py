import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from bench.capture import HeadMapCapture

PROMPTS = ["a photo of a cat", "a dog and a ball in the park", "a red sofa"]
SEEDS = [0, 1, 2]
TOKENS = [[5], [2, 5, 2], [3, 2]]  # repeated positions allowed; slots are what is asked for
STEPS = 3


class EagerReference:
    """Independent reference: keeps the layer's output from SDPA, and accumulates the conditional
    rows' softmax(q k^T * d^-0.5) in float64 from the layer's own weights."""

    def __init__(self, batch: int, tokens: list[list[int]]):
        self.batch, self.tokens, self.acc = batch, tokens, {}
        self.inner = AttnProcessor2_0()

    def for_layer(self, name):
        ref = self

        class Proc:
            def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
                out = ref.inner(attn, hidden_states, encoder_hidden_states, attention_mask)
                h = hidden_states.double()[-ref.batch:]  # conditional rows are the last B
                e = encoder_hidden_states.double()[-ref.batch:]
                q = F.linear(h, attn.to_q.weight.double())
                k = F.linear(e, attn.to_k.weight.double())
                d = q.shape[-1] // attn.heads
                q = q.view(ref.batch, -1, attn.heads, d).transpose(1, 2)
                k = k.view(ref.batch, -1, attn.heads, d).transpose(1, 2)
                p = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)  # (B, heads, hw, 77)
                for b, toks in enumerate(ref.tokens):
                    kept = p[b][:, :, toks].transpose(1, 2)  # (heads, T_b, hw)
                    ref.acc.setdefault((name, b), torch.zeros_like(kept))
                    ref.acc[(name, b)] += kept
                return out
        return Proc()


def generate(tiny, prompts, seeds, guidance=5.0):
    return [np.array(im) for im in tiny.generate(prompts, seeds, STEPS, guidance)]


def test_image_bit_identical_with_capture_on_and_off(tiny):
    index = tiny.head_index()
    before = dict(tiny.unet.attn_processors)
    plain = generate(tiny, PROMPTS, SEEDS)
    with HeadMapCapture(tiny.unet, index, TOKENS) as capture:
        captured = generate(tiny, PROMPTS, SEEDS)
    for a, b in zip(plain, captured):
        assert np.array_equal(a, b)
    assert capture.maps()  # something was captured
    after = tiny.unet.attn_processors
    assert all(after[k] is before[k] for k in before)  # originals restored
    assert not any(m._forward_hooks for m in tiny.unet.modules())  # hooks removed


def _check_against_eager(tiny, guidance):
    index = tiny.head_index()
    originals = dict(tiny.unet.attn_processors)
    ref = EagerReference(len(PROMPTS), TOKENS)
    tiny.unet.set_attn_processor({k: ref.for_layer(k) if k in {lay.processor for lay in index.layers} else v
                                  for k, v in originals.items()})
    try:
        with HeadMapCapture(tiny.unet, index, TOKENS) as capture:
            generate(tiny, PROMPTS, SEEDS, guidance)
    finally:
        tiny.unet.set_attn_processor(originals)
    maps = capture.maps()
    for lay in index.layers:
        res_maps = maps[lay.resolution]  # (B, S, H_r, T_max, h, w)
        start = int(np.searchsorted(index.heads_at(lay.resolution), lay.offset))
        for b, toks in enumerate(TOKENS):
            got = res_maps[b, 0, start: start + lay.n_heads, : len(toks)].flatten(-2)
            want = ref.acc[(lay.processor, b)].float()
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            assert got.shape == (lay.n_heads, len(toks), lay.resolution[0] * lay.resolution[1])
        assert torch.all(res_maps[2, 0, :, 2:] == 0)  # padded slots of the 2-token sample stay empty


def test_capture_equals_eager_reference_with_cfg(tiny):
    _check_against_eager(tiny, guidance=5.0)


def test_capture_equals_eager_reference_without_cfg(tiny):
    _check_against_eager(tiny, guidance=1.0)


def test_batch_equals_single_runs(tiny):
    index = tiny.head_index()
    with HeadMapCapture(tiny.unet, index, TOKENS) as batched:
        generate(tiny, PROMPTS, SEEDS)
    for b in range(len(PROMPTS)):
        with HeadMapCapture(tiny.unet, index, [TOKENS[b]]) as single:
            generate(tiny, [PROMPTS[b]], [SEEDS[b]])
        for res, m in single.maps().items():
            t = len(TOKENS[b])
            torch.testing.assert_close(batched.maps()[res][b, :, :, :t], m[0, :, :, :t], atol=1e-5, rtol=0)


def test_step_buckets_sum_to_total(tiny):
    index = tiny.head_index()
    with HeadMapCapture(tiny.unet, index, TOKENS[:1]) as total:
        generate(tiny, PROMPTS[:1], SEEDS[:1])
    with HeadMapCapture(tiny.unet, index, TOKENS[:1], n_steps=STEPS, step_buckets=3) as bucketed:
        generate(tiny, PROMPTS[:1], SEEDS[:1])
    for res, m in bucketed.maps().items():
        assert m.shape[1] == 3
        assert all(m[0, s].abs().sum() > 0 for s in range(3))  # one step per bucket
        torch.testing.assert_close(m.sum(1), total.maps()[res][:, 0], atol=1e-5, rtol=0)
