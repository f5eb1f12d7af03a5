import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from bench.capture import HeadMapCapture, target_probs

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


def _check_against_eager(tiny, guidance, atol=1e-5, rtol=0.0, **capture_kwargs):
    index = tiny.head_index()
    originals = dict(tiny.unet.attn_processors)
    ref = EagerReference(len(PROMPTS), TOKENS)
    tiny.unet.set_attn_processor({k: ref.for_layer(k) if k in {lay.processor for lay in index.layers} else v
                                  for k, v in originals.items()})
    try:
        with HeadMapCapture(tiny.unet, index, TOKENS, **capture_kwargs) as capture:
            generate(tiny, PROMPTS, SEEDS, guidance)
    finally:
        tiny.unet.set_attn_processor(originals)
    maps = capture.maps()
    for lay in index.layers:
        res_maps = maps[lay.resolution]  # (B, S, H_r, T_max, h, w)
        start = int(np.searchsorted(index.heads_at(lay.resolution), lay.offset))
        for b, toks in enumerate(TOKENS):
            got = res_maps[b, 0, start: start + lay.n_heads, : len(toks)].flatten(-2).cpu()
            want = ref.acc[(lay.processor, b)].float().cpu()
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
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


def test_target_probs_equals_float64_softmax():
    """The per-call kernel alone: fp32 inputs to 1e-6; fp16 inputs (logits rounded to fp16, as on a GPU) within
    the rounding of the logits, against the float64 softmax of the same fp16 q and k."""
    gen = torch.Generator().manual_seed(0)
    heads, d, hw, length = 4, 16, 24, 77
    q = torch.randn(2, hw, heads * d, generator=gen) * 2  # logits of a few units, like trained models'
    k = torch.randn(2, length, heads * d, generator=gen) * 2
    pos = torch.tensor([[3, 0, 76], [5, 5, 1]])[:, None, None, :]  # (B, 1, 1, T); repeats allowed

    def reference(q, k):
        qh = q.double().view(2, hw, heads, d).transpose(1, 2)
        kh = k.double().view(2, length, heads, d).transpose(1, 2)
        p = torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1)  # (B, heads, hw, 77)
        return torch.stack([p[b][..., pos[b, 0, 0]] for b in range(2)])  # (B, heads, hw, T)

    got = target_probs(q, k, pos, heads, d ** -0.5)
    assert got.dtype == torch.float32 and got.shape == (2, heads, hw, 3)
    torch.testing.assert_close(got.double(), reference(q, k), atol=1e-6, rtol=0)
    half = target_probs(q.half(), k.half(), pos, heads, d ** -0.5)
    assert half.dtype == torch.float32
    # fp16 logits of magnitude <= ~30 carry an absolute error <= 2^-11 * 30 ~ 0.015: p changes by <= 1.5% of p
    torch.testing.assert_close(half.double(), reference(q.half(), k.half()), atol=1e-4, rtol=2e-2)


class HostSyncSpy:
    """Patches the tensor calls that make a GPU stream wait for the host (item, bool, int/float conversion,
    tolist, numpy, nonzero, cpu, `to(<any device>)`, torch.tensor of host data) to record them while `armed`."""

    METHODS = ("item", "tolist", "numpy", "nonzero", "cpu", "__bool__", "__int__", "__float__")

    def __init__(self, monkeypatch):
        self.armed, self.calls = False, []
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._spy(name, getattr(torch.Tensor, name)))
        original_to = torch.Tensor.to

        def to(tensor, *args, **kwargs):
            if self.armed and any(isinstance(a, (str, torch.device)) for a in (*args, kwargs.get("device"))):
                self.calls.append("to(device)")  # a copy between host and device
            return original_to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", to)
        for name in ("tensor", "as_tensor"):
            monkeypatch.setattr(torch, name, self._spy(f"torch.{name}", getattr(torch, name)))

    def _spy(self, name, original):
        def spy(*args, **kwargs):
            if self.armed:
                self.calls.append(name)
            return original(*args, **kwargs)
        return spy

    def arm_around(self, monkeypatch, cls, method):
        original = getattr(cls, method)

        def armed(*args, **kwargs):
            self.armed = True
            try:
                return original(*args, **kwargs)
            finally:
                self.armed = False

        monkeypatch.setattr(cls, method, armed)


def test_capture_calls_nothing_that_syncs_inside_the_loop(tiny, monkeypatch):
    """CPU stand-in for the CUDA sync count: inside every attn2 call, the capture's own code (`_record`) calls
    none of the tensor methods that block on a GPU, and writes into accumulators allocated on entry; `maps()`
    after the loop may sync."""
    spy = HostSyncSpy(monkeypatch)
    spy.arm_around(monkeypatch, HeadMapCapture, "_record")
    index = tiny.head_index()
    with HeadMapCapture(tiny.unet, index, TOKENS, n_steps=STEPS, step_buckets=2) as capture:
        allocated = {res: acc.data_ptr() for res, acc in capture._acc.items()}  # accumulators exist before the loop
        generate(tiny, PROMPTS, SEEDS)
    assert capture.step == STEPS and spy.calls == []
    assert {res: acc.data_ptr() for res, acc in capture._acc.items()} == allocated  # and are never reallocated
    spy.armed = True  # the spy itself sees these calls: maps to the host after the loop are counted
    capture.maps()[index.resolutions[0]].cpu()
    assert spy.calls


@pytest.mark.slow
def test_compiled_capture_equals_eager_reference(tiny):
    """compile=True (torch.compile of the per-call kernel; ~40 s of compilation on CPU) gives the same maps."""
    _check_against_eager(tiny, guidance=5.0, compile=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_capture_fp16_on_cuda_equals_float64_reference():
    """tiny_sdxl in fp16 on CUDA, the default capture (compiled where Triton is): the float64 reference of the
    same fp16 activations within the fp16 tolerance of the logits (atol 2e-3 on maps summed over 3 steps,
    rtol 2e-2); images still bit-identical with capture on and off."""
    from bench.models import build_tiny_sdxl

    model = build_tiny_sdxl(device="cuda")
    model.pipe.to(torch.float16)
    model = dataclasses.replace(model, dtype=torch.float16)
    _check_against_eager(model, guidance=5.0, atol=2e-3, rtol=2e-2)
    plain = generate(model, PROMPTS, SEEDS)
    with HeadMapCapture(model.unet, model.head_index(), TOKENS):
        captured = generate(model, PROMPTS, SEEDS)
    assert all(np.array_equal(a, b) for a, b in zip(plain, captured))
