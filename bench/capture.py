"""Capture per-head cross-attention maps of chosen tokens during any diffusers UNet pass.

`HeadMapCapture` wraps the processor of every cross-attention (attn2) module. The original
processor still computes the layer's output (so images are bit-identical with capture on and off);
forward hooks on the layer's own `to_q` / `to_k` hand their outputs to the wrapper, which computes
`softmax(Q_cond K_cond^T * scale)` in fp32, keeps the requested token columns and adds them to a
per-layer accumulator. Self-attention (attn1) is never touched.

Conditional rows are found from the batch layout diffusers uses: with classifier-free guidance the
UNet batch is `[uncond (B); cond (B)]`, without it `[cond (B)]`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

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
    """

    def __init__(self, unet: torch.nn.Module, head_index: HeadIndex, token_indices: list[list[int]],
                 n_steps: int | None = None, step_buckets: int = 1):
        if step_buckets > 1 and not n_steps:
            raise ValueError("step buckets need n_steps (the number of UNet passes per sample)")
        super().__init__(unet, head_index)
        self.batch_size = len(token_indices)
        self.n_steps = n_steps
        self.step_buckets = step_buckets
        t_max = max(1, max(len(t) for t in token_indices))
        # (B, T_max) token positions; padded slots point at token 0 and are zeroed by `token_valid`
        self.token_pos = torch.zeros(self.batch_size, t_max, dtype=torch.long)
        self.token_valid = torch.zeros(self.batch_size, t_max, dtype=torch.bool)
        for b, toks in enumerate(token_indices):
            self.token_pos[b, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            self.token_valid[b, : len(toks)] = True
        self.step = 0
        self._acc: dict[str, torch.Tensor] = {}  # processor key -> (S, B, heads, T_max, h*w) fp32

    def __enter__(self) -> "HeadMapCapture":
        super().__enter__()
        self._handles.append(self.unet.register_forward_hook(self._count_step))
        return self

    def _count_step(self, *_args) -> None:
        self.step += 1

    # --- per call -------------------------------------------------------------------------------------------
    def _record(self, key: str, attn: Attention) -> None:
        slot = self._qk[key]
        q, k = slot.pop("q"), slot.pop("k")  # (N, hw, heads*d), (N, 77, heads*d)
        n_rows, hw, _ = q.shape
        layer = self.head_index.layer(key)
        if n_rows not in (self.batch_size, 2 * self.batch_size):
            raise RuntimeError(f"{key}: UNet batch {n_rows} is neither B={self.batch_size} nor 2B (CFG)")
        if hw != layer.resolution[0] * layer.resolution[1]:
            raise RuntimeError(f"{key}: map has {hw} positions, HeadIndex expects {layer.resolution}; "
                               "build the HeadIndex for the latent size being generated")
        cond = slice(n_rows - self.batch_size, n_rows)  # last B rows are the conditional ones
        heads = attn.heads
        q = q[cond].float().view(self.batch_size, hw, heads, -1).transpose(1, 2)  # (B, heads, hw, d)
        k = k[cond].float().view(self.batch_size, k.shape[1], heads, -1).transpose(1, 2)  # (B, heads, L, d)
        probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # (B, heads, hw, L)
        if self.token_pos.device != probs.device:  # once: a blocking host-to-GPU copy synchronises the stream
            self.token_pos, self.token_valid = self.token_pos.to(probs.device), self.token_valid.to(probs.device)
        pos = self.token_pos[:, None, None, :].expand(-1, heads, hw, -1)
        kept = probs.gather(-1, pos).transpose(-1, -2)  # (B, heads, T_max, hw)
        kept = kept * self.token_valid[:, None, :, None]
        bucket = min(self.step * self.step_buckets // self.n_steps, self.step_buckets - 1) if self.n_steps else 0
        if key not in self._acc:
            self._acc[key] = torch.zeros((self.step_buckets, *kept.shape), dtype=torch.float32, device=kept.device)
        self._acc[key][bucket] += kept

    # --- results ----------------------------------------------------------------------------------------------
    def maps(self) -> dict[tuple[int, int], torch.Tensor]:
        """Per resolution: fp32 (B, S, H_r, T_max, h, w), heads in HeadIndex order."""
        missing = [lay.processor for lay in self.head_index.layers if lay.processor not in self._acc]
        if missing:
            raise RuntimeError(f"no attention was captured for {len(missing)} layers (e.g. {missing[0]}): "
                               "was the UNet run inside the capture context?")
        out = {}
        for res in self.head_index.resolutions:
            per_layer = [self._acc[lay.processor] for lay in self.head_index.layers if lay.resolution == res]
            stacked = torch.cat(per_layer, dim=2).transpose(0, 1)  # (B, S, H_r, T_max, hw)
            out[res] = stacked.reshape(*stacked.shape[:4], *res)
        return out

    def extra_bytes(self) -> int:
        """Bytes held by the accumulators (the capture's own state)."""
        return sum(t.numel() * t.element_size() for t in self._acc.values())


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
