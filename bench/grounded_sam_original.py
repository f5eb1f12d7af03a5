"""Grounded-SAM's backend with the original packages: groundingdino-py (GroundingDINO) + segment-anything (SAM).

`GroundedSam(OriginalGrounding(...))` is the same recipe and post-processing as `segmenter=grounded_sam`
(`bench.grounded_sam.GroundedSam`: one query per word, inclusive box/text thresholds with the text score
over the word's own tokens, SAM's best mask per box, union per word, exclusions "no detection" / "empty
mask"); only the backend's two model calls (`detect`, `segment`) differ, so the two can be compared mask for
mask (`tests/mask_agreement.py`). Checkpoints are local files (the released
`groundingdino_swint_ogc.pth` and `sam_vit_h_4b8939.pth`); the BERT text encoder is a Hugging Face id or a
local folder.

The packages need torchvision and transformers < 5, so they live in their own environment, `.venv-gsam`
(`make test-gsam` builds it with the pins in the Makefile and runs tests/test_grounded_sam_original.py).
SAM runs in float32, as the original demo does.
"""

from __future__ import annotations

import os
from importlib import resources
from pickle import UnpicklingError  # what torch.load raises for a file that is not plain data

import numpy as np
import PIL.Image

from bench import ModelUnavailableError
from bench.checks import GSAM_ENV_FIX, hub_offline
from bench.devices import resolve_device
from bench.grounded_sam import (
    Detections,
    GroundingBackend,
    non_word_token_ids,
    query_scores,
    select_best_masks,
    unavailable_error,
    union_instances,
)


class OriginalGrounding(GroundingBackend):
    """GroundingDINO (groundingdino-py) and SAM (segment-anything) from local checkpoints: the backend of
    `segmenter=grounded_sam_original`."""

    name = "grounded_sam_original"

    def __init__(self, groundingdino_checkpoint: str, sam_checkpoint: str,
                 groundingdino_config: str = "GroundingDINO_SwinT_OGC.py", sam_type: str = "vit_h",
                 text_encoder: str = "bert-base-uncased", image_size: int = 800, max_size: int = 1333,
                 device: str = "auto", multimask: bool = True, sam_box_chunk: int = 64,
                 local_files_only: bool | None = None) -> None:
        """
        groundingdino_checkpoint / sam_checkpoint: local .pth files (released checkpoints or state dicts).
        groundingdino_config: a config file of groundingdino-py; a bare file name is looked up in the
            package's own config folder (GroundingDINO_SwinT_OGC.py, GroundingDINO_SwinB_cfg.py).
        sam_type: segment-anything's registry key (vit_h, vit_l, vit_b).
        text_encoder: the BERT GroundingDINO encodes phrases with (HF id in the local cache, or a folder).
        image_size / max_size: GroundingDINO's input resize (shorter side, longer-side cap), 800 / 1333 as released.
        device: "auto" (cuda if available, else cpu) or a torch device string; both models run in float32.
        multimask: the best of SAM's 3 candidate masks by predicted IoU (True), or its single-mask output.
        sam_box_chunk: boxes per SAM decoder call.
        local_files_only: never touch the network for the text encoder; None -> True when HF_HUB_OFFLINE is set.
        """
        if sam_box_chunk < 1:
            raise ValueError("segmenter.backend.sam_box_chunk must be >= 1")
        self.groundingdino_checkpoint = str(groundingdino_checkpoint)
        self.sam_checkpoint = str(sam_checkpoint)
        self.groundingdino_config = str(groundingdino_config)
        self.sam_type = str(sam_type)
        self.text_encoder = str(text_encoder)
        self.image_size, self.max_size = int(image_size), int(max_size)
        self.device = device
        self.multimask = bool(multimask)
        self.sam_box_chunk = int(sam_box_chunk)
        self.local_files_only = local_files_only
        self._det_model = self._predictor = None

    @classmethod
    def from_models(cls, detector_model, sam_model, **kwargs) -> "OriginalGrounding":
        """Wrap a built GroundingDINO (with its `.tokenizer`) and a segment-anything `Sam` (tests, notebooks)."""
        kwargs.setdefault("groundingdino_checkpoint", type(detector_model).__name__)
        kwargs.setdefault("sam_checkpoint", type(sam_model).__name__)
        self = cls(**kwargs)
        self._install(detector_model, sam_model)
        return self

    @property
    def torch_device(self):
        return resolve_device(self.device)

    @property
    def loaded(self) -> bool:
        return self._det_model is not None

    # -- availability and loading ----------------------------------------------------------------------

    def config_path(self) -> str:
        """The GroundingDINO config file: a path, or a bare name inside groundingdino/config."""
        if os.sep in self.groundingdino_config or os.path.exists(self.groundingdino_config):
            return os.path.expanduser(self.groundingdino_config)
        return str(resources.files("groundingdino") / "config" / self.groundingdino_config)

    def check_available(self) -> None:
        """One line naming the fix when the packages, a checkpoint or the text encoder are missing."""
        try:
            import groundingdino  # noqa: F401
            import segment_anything  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError as err:
            raise ModelUnavailableError(f"segmenter=grounded_sam_original needs groundingdino-py, segment-anything "
                                        f"and torchvision ({err.name} is missing here): {GSAM_ENV_FIX}") from None
        from segment_anything import sam_model_registry
        from transformers import AutoConfig

        if self.sam_type not in sam_model_registry:
            raise ValueError(f"segmenter.backend.sam_type={self.sam_type} is not one of {sorted(sam_model_registry)}")
        for what, path, key in (("GroundingDINO config", self.config_path(), "groundingdino_config"),
                                ("GroundingDINO checkpoint", self.groundingdino_checkpoint,
                                 "groundingdino_checkpoint"),
                                ("SAM checkpoint", self.sam_checkpoint, "sam_checkpoint")):
            if not os.path.isfile(os.path.expanduser(path)):
                raise ModelUnavailableError(f"{what} '{path}' does not exist: download it on a machine with network "
                                            f"and set segmenter.backend.{key}=/path/to/file")
        local_only = hub_offline(self.local_files_only)
        try:
            AutoConfig.from_pretrained(os.path.expanduser(self.text_encoder), local_files_only=local_only)
        except (OSError, ValueError) as err:
            raise unavailable_error("BERT text encoder", self.text_encoder, "text_encoder", local_only, err) from None

    def load(self) -> None:
        """Build GroundingDINO from its config, load both checkpoints (idempotent; called by the first segment)."""
        if self.loaded:
            return
        self.check_available()
        import torch
        from groundingdino.models import build_model
        from groundingdino.util.misc import clean_state_dict
        from groundingdino.util.slconfig import SLConfig
        from segment_anything import sam_model_registry

        args = SLConfig.fromfile(self.config_path())
        args.device = str(self.torch_device)
        args.text_encoder_type = os.path.expanduser(self.text_encoder)
        model = build_model(args)
        try:  # weights only: a checkpoint is data and runs no code when read
            checkpoint = torch.load(os.path.expanduser(self.groundingdino_checkpoint), map_location="cpu",
                                    weights_only=True)
        except UnpicklingError:
            raise ModelUnavailableError(f"GroundingDINO checkpoint '{self.groundingdino_checkpoint}' holds Python "
                                        "objects besides tensors (torch.load(weights_only=True) refused it): save its "
                                        "'model' state dict alone (torch.save(ckpt['model'], path)) and point "
                                        "segmenter.backend.groundingdino_checkpoint to it") from None
        state = clean_state_dict(checkpoint.get("model", checkpoint))
        missing, _ = model.load_state_dict(state, strict=False)  # strict=False as released (BERT buffers)
        expected = len(model.state_dict())
        if len(missing) > 0.1 * expected:
            raise ModelUnavailableError(f"GroundingDINO checkpoint '{self.groundingdino_checkpoint}' matches only "
                                        f"{expected - len(missing)} of {expected} tensors of {self.config_path()}: "
                                        "set segmenter.backend.groundingdino_config= to the config it was trained with")
        sam = sam_model_registry[self.sam_type](checkpoint=os.path.expanduser(self.sam_checkpoint))
        self._install(model, sam)

    def _install(self, detector_model, sam_model) -> None:
        from segment_anything import SamPredictor

        device = self.torch_device
        self._det_model = detector_model.to(device).eval()
        self._predictor = SamPredictor(sam_model.to(device).eval())
        self._non_word_ids = non_word_token_ids(detector_model.tokenizer)

    # -- the two model calls ---------------------------------------------------------------------------

    def detect(self, images: list[PIL.Image.Image], phrases: list[str]) -> list[Detections]:
        """One forward per distinct image (its phrases batched): padding images of other sizes into one batch
        changes the released model's boxes (its Swin backbone sees the padding), so images are never mixed."""
        dets: list[Detections | None] = [None] * len(images)
        by_image: dict[int, list[int]] = {}
        for i, image in enumerate(images):
            by_image.setdefault(id(image), []).append(i)
        for pairs in by_image.values():
            for i, det in zip(pairs, self._detect_one(images[pairs[0]], [phrases[i] for i in pairs])):
                dets[i] = det
        return dets

    def _detect_one(self, image: PIL.Image.Image, phrases: list[str]) -> list[Detections]:
        """GroundingDINO on one image with each phrase (a batch of identical images, no padding)."""
        import groundingdino.datasets.transforms as T
        import torch

        model, device = self._det_model, self.torch_device
        to_input = T.Compose([T.RandomResize([self.image_size], max_size=self.max_size), T.ToTensor(),
                              T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # one size: deterministic
        pixels = to_input(image, None)[0].to(device)  # (3, h, w)
        out = model(pixels[None].expand(len(phrases), -1, -1, -1), captions=list(phrases))
        probs = out["pred_logits"].float().sigmoid()  # (n, q, max_text_len); 0 outside the phrase
        tokens = model.tokenizer(list(phrases), padding="longest", return_tensors="pt").to(device)
        box_scores, text_scores = query_scores(probs, tokens["input_ids"], tokens["attention_mask"],
                                               self._non_word_ids)
        w, h = image.size
        cx, cy, bw, bh = out["pred_boxes"].float().unbind(-1)  # (n, q) each, relative to the image
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        boxes = (boxes * torch.tensor([w, h, w, h], device=boxes.device)).cpu().numpy()  # (n, q, 4) pixels
        return [Detections.clipped(boxes[i], (w, h), box_scores[i], text_scores[i]) for i in range(len(phrases))]

    def segment(self, images: list[PIL.Image.Image], boxes: list[list[np.ndarray]]) -> list[list[np.ndarray | None]]:
        """SamPredictor, one image at a time."""
        import torch

        predictor, device = self._predictor, self.torch_device
        result: list[list[np.ndarray | None]] = [[None] * len(b) for b in boxes]
        for i, (image, word_boxes) in enumerate(zip(images, boxes)):
            flat = np.concatenate(word_boxes, 0) if word_boxes else np.zeros((0, 4), np.float32)
            if not len(flat):
                continue  # no box for any word: SAM is skipped
            pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
            predictor.set_image(pixels)
            owner = torch.as_tensor(np.concatenate([np.full(len(b), j) for j, b in enumerate(word_boxes)]),
                                    device=device)
            union = None
            for s in range(0, len(flat), self.sam_box_chunk):
                prompt = predictor.transform.apply_boxes_torch(
                    torch.as_tensor(flat[s: s + self.sam_box_chunk], device=device), pixels.shape[:2])
                logits, iou, _ = predictor.predict_torch(None, None, boxes=prompt, multimask_output=self.multimask,
                                                         return_logits=True)  # (n, m, H, W), (n, m)
                masks = select_best_masks(logits, iou) > predictor.model.mask_threshold  # (n, H, W)
                part = union_instances(masks, owner[s: s + self.sam_box_chunk], len(word_boxes))
                union = part if union is None else union | part
            union = union.cpu().numpy()
            for j, b in enumerate(word_boxes):
                if len(b):
                    result[i][j] = union[j]
        return result
