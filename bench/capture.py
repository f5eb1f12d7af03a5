"""Capture per-head cross-attention maps of chosen tokens during any diffusers UNet pass.

`HeadMapCapture` wraps the processor of every cross-attention (attn2) module. The original
processor still computes the layer's output (so images are bit-identical with capture on and off);
forward hooks on the layer's own `to_q` / `to_k` hand their outputs to the wrapper, which computes the requested
token columns of `softmax(Q_cond K_cond^T * scale)` (logits in the model's dtype, normalised in fp32 from each
row's log-sum-exp) and adds them to accumulators allocated once on entry. Self-attention (attn1) is never touched.

Conditional rows are found from the batch layout diffusers uses: with classifier-free guidance the
UNet batch is `[uncond (B); cond (B)]`, without it `[cond (B)]`.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager

import numpy as np
import torch
from diffusers.models.attention_processor import Attention

from bench.heads import HeadIndex


class Attn2Hooks(AbstractContextManager):
    """Wraps the processor of every attn2 layer of `head_index` (the capture and HRV voting build on it).

    The original processor still computes the layer's output. Forward hooks on the layer's own `to_q` /
    `to_k` leave their outputs of the current call in `self._qk[key]` ("q", "k"); after the original
    processor returns, `_record(key, attn)` runs. Leaving the context restores processors and hooks.
    """

    def __init__(self, unet: torch.nn.Module, head_index: HeadIndex):
        self.unet = unet
        self.head_index = head_index
        self._qk: dict[str, dict[str, torch.Tensor]] = {}
        self._originals: dict[str, object] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self):
        modules = dict(self.unet.named_modules())
        processors = self.unet.attn_processors
        for layer in self.head_index.layers:
            name = layer.processor.removesuffix(".processor")
            attn: Attention = modules[name]
            if attn.norm_q is not None or attn.norm_k is not None:
                raise NotImplementedError(f"{name}: q/k normalisation is not supported")
            self._qk[layer.processor] = slot = {}
            self._handles.append(attn.to_q.register_forward_hook(_store_output(slot, "q")))
            self._handles.append(attn.to_k.register_forward_hook(_store_output(slot, "k")))
            self._originals[layer.processor] = processors[layer.processor]
            attn.set_processor(_WrappedProcessor(self, layer.processor, processors[layer.processor]))
        return self

    def __exit__(self, *exc) -> None:
        modules = dict(self.unet.named_modules())
        for key, original in self._originals.items():
            modules[key.removesuffix(".processor")].set_processor(original)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._originals.clear()

    def _record(self, key: str, attn: Attention) -> None:
        """Called after each wrapped attn2 call, with that call's q/k in self._qk[key]."""
        raise NotImplementedError


class HeadMapCapture(Attn2Hooks):
    """Context manager that accumulates target-token maps of every attn2 head over steps.

    token_indices[b] lists the prompt token positions (0 = start token) to keep for sample b.
    After the pass, `maps()` returns, per resolution, fp32 (B, S, H_r, T_max, h, w) with S step
    buckets and heads in HeadIndex order; slots beyond len(token_indices[b]) are zero.

    Per attn2 call the work is `target_probs` plus one in-place add into a preallocated view, all on the
    UNet's device: no host-device synchronisation. `compile=True` runs that work through torch.compile
    (fusing what follows the matmul into a few kernels); None (default) compiles on CUDA where Triton is
    available and stays eager elsewhere (on CPU, compiling takes ~40 s once and did not speed the tiny model).
    """

    def __init__(self, unet: torch.nn.Module, head_index: HeadIndex, token_indices: list[list[int]],
                 n_steps: int | None = None, step_buckets: int = 1, compile: bool | None = None):
        if step_buckets > 1 and not n_steps:
            raise ValueError("step buckets need n_steps (the number of UNet passes per sample)")
        super().__init__(unet, head_index)
        self.batch_size = len(token_indices)
        self.n_steps = n_steps
        self.step_buckets = step_buckets
        self.compile = compile
        t_max = max(1, max(len(t) for t in token_indices))
        # (B, T_max) token positions; padded slots point at token 0 and are zeroed by `token_valid` in maps()
        self.token_pos = torch.zeros(self.batch_size, t_max, dtype=torch.long)
        self.token_valid = torch.zeros(self.batch_size, t_max, dtype=torch.bool)
        for b, toks in enumerate(token_indices):
            self.token_pos[b, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            self.token_valid[b, : len(toks)] = True
        self.step = 0
        self._acc: dict[tuple[int, int], torch.Tensor] = {}  # resolution -> (S, B, H_r, h*w, T_max) fp32
        self._out: dict[str, list[torch.Tensor]] = {}  # processor key -> per bucket its heads' (B, heads, hw, T_max)
        self._seen: set[str] = set()  # layers recorded at least once

    def __enter__(self) -> "HeadMapCapture":
        device = next(self.unet.parameters()).device
        # moved once, before the loop: per call everything stays on the device
        self.token_pos, self.token_valid = self.token_pos.to(device), self.token_valid.to(device)
        self._pos = self.token_pos[:, None, None, :]  # (B, 1, 1, T_max) for gathering along the token axis
        t_max = self.token_pos.shape[1]
        for res in self.head_index.resolutions:
            n_heads = len(self.head_index.heads_at(res))
            self._acc[res] = torch.zeros(self.step_buckets, self.batch_size, n_heads, res[0] * res[1], t_max,
                                         dtype=torch.float32, device=device)
        for layer in self.head_index.layers:  # a layer's heads: a run of its resolution's heads, in index order
            start = int(np.searchsorted(self.head_index.heads_at(layer.resolution), layer.offset))
            acc = self._acc[layer.resolution]
            self._out[layer.processor] = [acc[s, :, start: start + layer.n_heads] for s in range(self.step_buckets)]
        use_compile = self.compile if self.compile is not None else (device.type == "cuda" and _has_triton())
        self._kernel = _compiled_accumulate() if use_compile else accumulate_target_probs
        super().__enter__()
        self._handles.append(self.unet.register_forward_hook(self._count_step))
        return self

    def _count_step(self, *_args) -> None:
        self.step += 1

    # --- per call -------------------------------------------------------------------------------------------
    def _record(self, key: str, attn: Attention) -> None:
        slot = self._qk[key]
        q, k = slot.pop("q"), slot.pop("k")  # (N, hw, heads*d), (N, 77, heads*d) in the model's dtype
        n_rows, hw = q.shape[0], q.shape[1]
        out = self._out[key]
        if key not in self._seen:  # shapes are fixed within one capture: checked on the first call only
            self._check(key, n_rows, hw)
            self._seen.add(key)
        bucket = min(self.step * self.step_buckets // self.n_steps, self.step_buckets - 1) if self.n_steps else 0
        b = self.batch_size  # the last B rows are the conditional ones (CFG: [uncond; cond])
        self._kernel(out[bucket], q[n_rows - b:], k[n_rows - b:], self._pos, attn.heads, attn.scale)

    def _check(self, key: str, n_rows: int, hw: int) -> None:
        layer = self.head_index.layer(key)
        if n_rows not in (self.batch_size, 2 * self.batch_size):
            raise RuntimeError(f"{key}: UNet batch {n_rows} is neither B={self.batch_size} nor 2B (CFG)")
        if hw != layer.resolution[0] * layer.resolution[1]:
            raise RuntimeError(f"{key}: map has {hw} positions, HeadIndex expects {layer.resolution}; "
                               "build the HeadIndex for the latent size being generated")

    # --- results ----------------------------------------------------------------------------------------------
    def maps(self) -> dict[tuple[int, int], torch.Tensor]:
        """Per resolution: fp32 (B, S, H_r, T_max, h, w), heads in HeadIndex order."""
        missing = [lay.processor for lay in self.head_index.layers if lay.processor not in self._seen]
        if missing:
            raise RuntimeError(f"no attention was captured for {len(missing)} layers (e.g. {missing[0]}): "
                               "was the UNet run inside the capture context?")
        out = {}
        for res, acc in self._acc.items():
            kept = acc * self.token_valid[None, :, None, None, :]  # (S, B, H_r, hw, T_max), padded slots zero
            out[res] = kept.permute(1, 0, 2, 4, 3).unflatten(-1, res).contiguous()  # (B, S, H_r, T_max, h, w)
        return out

    def extra_bytes(self) -> int:
        """Bytes held by the accumulators (the capture's own state)."""
        return sum(t.numel() * t.element_size() for t in self._acc.values())


def target_probs(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) of the target tokens only, fp32 (B, heads, hw, T).

    q (B, hw, heads*d) and k (B, L, heads*d) stay in the model's dtype (so do the logits); the normalisation
    is fp32 through each row's log-sum-exp, and only the T gathered columns (`pos`, (B, 1, 1, T) token
    positions) are ever turned into probabilities."""
    qh = q.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, heads, hw, d)
    kh = k.unflatten(-1, (heads, -1)).permute(0, 2, 3, 1)  # (B, heads, d, L)
    logits = torch.matmul(qh, kh).mul_(scale)  # (B, heads, hw, L) model dtype
    peak = logits.amax(-1, keepdim=True)  # (B, heads, hw, 1), exact: one of the logits
    total = torch.exp(logits - peak).sum(-1, keepdim=True, dtype=torch.float32)  # (B, heads, hw, 1) fp32, >= 1
    target = logits.gather(-1, pos.expand(*logits.shape[:-1], -1))  # (B, heads, hw, T) model dtype
    return torch.exp(target.float() - peak.float() - total.log())


def accumulate_target_probs(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, heads: int,
                            scale: float) -> None:
    """out (B, heads, hw, T) fp32 += target_probs(q, k, pos, heads, scale): the whole per-call work."""
    out.add_(target_probs(q, k, pos, heads, scale))


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_accumulate():
    """accumulate_target_probs through torch.compile (built once per process; shapes become dynamic after the
    first recompile, so 70 layers of two resolutions and varying batch and token counts share a few graphs)."""
    return torch.compile(accumulate_target_probs, dynamic=None, fullgraph=True)


def _store_output(slot: dict, name: str):
    def hook(_module, _inputs, output):
        slot[name] = output
    return hook


class _WrappedProcessor:
    """Runs the original processor, then lets the owner record from the q/k its projections produced."""

    def __init__(self, owner: Attn2Hooks, key: str, inner: object):
        self.owner = owner
        self.key = key
        self.inner = inner

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, **kwargs) -> torch.Tensor:
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, **kwargs)
        self.owner._record(self.key, attn)
        return out
