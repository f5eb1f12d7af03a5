"""Grounded-SAM pseudo ground truth: GroundingDINO turns a word into boxes, SAM turns boxes into masks.

This is the "selective aggregation" recipe for word masks: for every (image, word) pair GroundingDINO is
queried with the word alone (lower-cased, ending in "." as GroundingDINO expects), the boxes that pass
`box_threshold` and `text_threshold` are prompted to SAM, each box keeps SAM's best mask (highest predicted
IoU) and the word's mask is the union over its boxes, at the image's original resolution.

`GroundedSam` is the recipe; the models are a backend with two calls, `detect` (GroundingDINO's raw
detections for (image, phrase) pairs) and `segment` (SAM's masks for boxes, OR-ed per word):
`TransformersGrounding` here (`GroundingDinoForObjectDetection`, `SamModel` and their processors; torchvision
is not needed), `bench.grounded_sam_original.OriginalGrounding` (groundingdino-py + segment-anything).

Design choices
--------------
* One detection query per word. Each sample of a detector batch is one (image, phrase) pair, so a box found
  for one word can never be attributed to another word (GroundingDINO's multi-phrase prompts share queries
  between phrases). Batches mix images and phrases; the text of every sample is a single phrase.
* Thresholds are inclusive: a box is kept when its box score (max over all prompt tokens, as in
  GroundingDINO and transformers) is >= `box_threshold` and its text score (max over the word's own
  tokens, i.e. without [CLS], [SEP], padding and ".") is >= `text_threshold`. transformers'
  `post_process_grounded_object_detection` only uses `text_threshold` to build label strings (and counts
  [SEP]/"." as label tokens), so the text filter is computed here from the logits; the processor is used
  for the box conversion (centre -> corners, original pixel coordinates).
* Loading is lazy: building the object (e.g. from the Hydra config) imports nothing heavy and loads no
  weights. `check_available()` resolves both models' configs (local path or HF cache, network only when
  allowed) and raises a one-line `ModelUnavailableError` when one is missing; call it before the GPU work starts.
  `load()` loads the weights (it is called by the first `segment`).
* dtype: GroundingDINO runs in float32 by default (`detector_dtype`): its scores are thresholded at
  0.35/0.25, so a half-precision drift near a threshold would flip boxes in or out of the pseudo ground
  truth, and it is the cheap half of the pipeline. SAM (the ViT-H image encoder is most of the cost) runs in
  float16 on CUDA when `dtype="auto"` (float32 on CPU); its mask logits are binarised at 0 and its IoU
  head only ranks the three candidate masks, both robust to fp16. An explicit `dtype` applies to SAM only.
* Exclusions instead of silent zeros: no box passes -> `WordMask(reason="no detection")`; boxes but an
  empty union -> "empty mask"; an empty word -> "empty word".
"""

from __future__ import annotations

import inspect
import os
import types
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import PIL.Image

from bench import ModelUnavailableError
from bench.checks import brief, hub_offline, looks_like_path
from bench.devices import resolve_device, resolve_dtype
from bench.segment import Segmenter, WordMask

NO_DETECTION = "no detection"
EMPTY_MASK = "empty mask"
EMPTY_WORD = "empty word"


# --------------------------------------------------------------------------------------------------------
# pure helpers (no models): tested on hand-made inputs


def word_to_phrase(word: str) -> str:
    """GroundingDINO phrase for one word: lower-cased, whitespace collapsed, ending with a single "."."""
    text = " ".join(str(word).lower().split()).rstrip(". ").strip()
    return f"{text}." if text else ""


def filter_detections(boxes: np.ndarray, box_scores: np.ndarray, text_scores: np.ndarray,
                      box_threshold: float, text_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep boxes with box score >= box_threshold and text score >= text_threshold.

    Returns (boxes (n, 4) float32, box scores (n,) float32)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    box_scores = np.asarray(box_scores, np.float32).reshape(-1)
    text_scores = np.asarray(text_scores, np.float32).reshape(-1)
    if not len(boxes) == len(box_scores) == len(text_scores):
        raise ValueError(f"{len(boxes)} boxes, {len(box_scores)} box scores, {len(text_scores)} text scores")
    keep = (box_scores >= box_threshold) & (text_scores >= text_threshold)
    return boxes[keep], box_scores[keep]


def non_word_token_ids(tokenizer) -> set[int]:
    """Token ids that are not part of a phrase's word: [CLS], [SEP], padding and GroundingDINO's "."."""
    ids = {i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) if i is not None}
    dot = tokenizer.convert_tokens_to_ids(".")
    if dot is not None and dot != tokenizer.unk_token_id:
        ids.add(dot)
    return ids


def query_scores(probs, input_ids, attention_mask, non_word_ids: set[int]):
    """GroundingDINO's per-query scores from token probabilities probs (n, q, max_text_len):
    box score = max over all prompt tokens, text score = max over the word's own tokens (input_ids and
    attention_mask (n, L) of the tokenised phrases). Returns (box_scores, text_scores), each (n, q)."""
    word_tokens = attention_mask.bool().clone()  # (n, L)
    for token_id in non_word_ids:
        word_tokens &= input_ids != token_id
    seq = input_ids.shape[1]
    text_scores = probs[:, :, :seq].masked_fill(~word_tokens[:, None, :], 0.0).amax(dim=-1)
    return probs.amax(dim=-1), text_scores


def union_instances(masks, owner, n_words: int):
    """OR instance masks into one mask per word.

    masks: torch bool (n, H, W), one per box; owner: torch long (n,), the word index of each box.
    Returns torch bool (n_words, H, W); a word without boxes gets an all-False mask."""
    import torch

    out = torch.zeros((n_words, *masks.shape[-2:]), dtype=torch.bool, device=masks.device)
    for j in owner.unique().tolist():
        out[j] = masks[owner == j].any(dim=0)
    return out


def select_best_masks(pred_masks, iou_scores):
    """Per box, SAM's candidate mask with the highest predicted IoU.

    pred_masks: (n, m, h, w) logits; iou_scores: (n, m). Returns (n, h, w)."""
    import torch

    best = iou_scores.argmax(dim=-1)
    return pred_masks[torch.arange(pred_masks.shape[0], device=pred_masks.device), best]


def make_word_mask(union: np.ndarray | None, boxes: np.ndarray, scores: np.ndarray) -> WordMask:
    """WordMask from a word's union mask and its kept boxes; exclusions instead of silent zeros."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if len(boxes) == 0:
        return WordMask(mask=None, reason=NO_DETECTION)
    if union is None or not union.any():
        return WordMask(mask=None, reason=EMPTY_MASK, boxes=boxes, scores=scores)
    return WordMask(mask=np.asarray(union, dtype=bool), boxes=boxes, scores=scores)


# --------------------------------------------------------------------------------------------------------
# model loading


def unavailable_error(kind: str, name: str, key: str, local_only: bool, err: BaseException) -> ModelUnavailableError:
    first = brief(err)
    if looks_like_path(name):
        path = os.path.expanduser(name)
        what = ("does not exist" if not os.path.exists(path)
                else f"could not be loaded ({type(err).__name__}: {first})")
        return ModelUnavailableError(f"{kind} local copy '{name}' {what}: set segmenter.backend.{key}= to a folder "
                                     "saved with save_pretrained (config.json + weights) or to a Hugging Face model id")
    where = ("the hub is not used (offline mode / local_files_only)" if local_only
             else f"the hub is unreachable or refused it ({type(err).__name__}: {first})")
    return ModelUnavailableError(f"{kind} '{name}' is not in the local Hugging Face cache and {where}: download it "
                        f"on a machine with network (hf download {name}) or set "
                        f"segmenter.backend.{key}=/path/to/local/copy")


@dataclass
class Detections:
    """All of GroundingDINO's queries for one (image, phrase) sample, before thresholds."""

    boxes: np.ndarray  # (q, 4) xyxy original pixels, clipped to the image
    box_scores: np.ndarray  # (q,)
    text_scores: np.ndarray  # (q,)

    @classmethod
    def clipped(cls, boxes: np.ndarray, size: tuple[int, int], box_scores, text_scores) -> "Detections":
        """From xyxy pixel boxes (q, 4), clipped to the image size (w, h), and torch score vectors (q,)."""
        w, h = size
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return cls(boxes, box_scores.cpu().numpy(), text_scores.cpu().numpy())


class GroundingBackend(ABC):
    """The two model calls of the recipe and their loading: GroundingDINO's raw detections for (image, phrase)
    pairs and SAM's masks for boxes. `GroundedSam` applies the same recipe over any backend."""

    #: what the recipe's segmenter is called in tables (`segmenter.name`)
    name: str = "grounded_sam"

    @abstractmethod
    def check_available(self) -> None:
        """Cheap pre-flight (no weights): one-line ModelUnavailableError naming the fix when a part is missing."""

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """Whether the models are loaded."""

    @abstractmethod
    def load(self) -> None:
        """Load the models (idempotent)."""

    @abstractmethod
    def detect(self, images: list[PIL.Image.Image], phrases: list[str]) -> list[Detections]:
        """GroundingDINO on (image, phrase) pairs, one phrase per pair: all queries, no thresholds."""

    @abstractmethod
    def segment(self, images: list[PIL.Image.Image], boxes: list[list[np.ndarray]]) -> list[list[np.ndarray | None]]:
        """SAM's best mask per box, OR-ed per word: boxes[i][j] (n, 4) xyxy pixels of word j in image i ->
        [i][j] bool (H, W), or None when word j of image i has no box."""


class TransformersGrounding(GroundingBackend):
    """GroundingDINO and SAM (or SAM 2) through transformers: `segmenter=grounded_sam`."""

    name = "grounded_sam"

    def __init__(self, detector: str = "IDEA-Research/grounding-dino-base", sam: str = "facebook/sam-vit-huge",
                 device: str = "auto", dtype: str = "auto", detector_dtype: str = "float32",
                 local_files_only: bool | None = None, multimask: bool = True, sam_box_chunk: int = 64) -> None:
        """
        detector / sam: Hugging Face model ids or local folders (save_pretrained layout). `sam` may be a SAM 2
            checkpoint (model_type "sam2", e.g. facebook/sam2.1-hiera-large) where transformers has Sam2Model;
            its image processor needs torchvision (.venv-gsam has it).
        device: "auto" (cuda if available, else cpu) or a torch device string.
        dtype: SAM's dtype: "auto" (float16 on CUDA, float32 otherwise), "float32", "float16", "bfloat16".
        local_files_only: never touch the network; None -> True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE)
            is set.
        detector_dtype: GroundingDINO's dtype, float32 by default (see the module docstring).
        multimask: ask SAM for its 3 candidate masks per box and keep the best by predicted IoU (True), or
            take its single-mask output (False, what the Grounded-SAM demo does).
        sam_box_chunk: boxes per SAM mask-decoder call (bounds memory when thresholds let many boxes through).
        """
        if sam_box_chunk < 1:
            raise ValueError("segmenter.backend.sam_box_chunk must be >= 1")
        for value in (dtype, detector_dtype):
            resolve_dtype(value, resolve_device("cpu"))  # one-line ValueError for an unknown name
        self.detector = str(detector)
        self.sam = str(sam)
        self.device = device
        self.dtype = dtype
        self.detector_dtype = detector_dtype
        self.local_files_only = local_files_only
        self.multimask = bool(multimask)
        self.sam_box_chunk = int(sam_box_chunk)
        self._det_model = self._det_proc = self._sam_model = self._sam_proc = None

    @classmethod
    def from_models(cls, detector_model, detector_processor, sam_model, sam_processor,
                    **kwargs) -> "TransformersGrounding":
        """Wrap already-built models/processors (tests, notebooks); kwargs are constructor arguments.

        The models are moved to the resolved device and dtypes like loaded ones."""
        for key, model in (("detector", detector_model), ("sam", sam_model)):
            kwargs.setdefault(key, getattr(model, "name_or_path", "") or type(model).__name__)
        self = cls(**kwargs)
        self._install(detector_model, detector_processor, sam_model, sam_processor)
        return self

    # -- device / dtype / loading ------------------------------------------------------------------

    @property
    def torch_device(self):
        return resolve_device(self.device)

    def _torch_dtype(self, value: str):
        return resolve_dtype(value, self.torch_device)

    @property
    def sam_dtype(self):
        return self._torch_dtype(self.dtype)

    @property
    def det_dtype(self):
        return self._torch_dtype(self.detector_dtype)

    def check_available(self) -> None:
        """Resolve both models' configs (no weights)."""
        from transformers import AutoConfig

        local_only = hub_offline(self.local_files_only)
        for kind, name, key in (("GroundingDINO", self.detector, "detector"), ("SAM", self.sam, "sam")):
            try:
                AutoConfig.from_pretrained(os.path.expanduser(name), local_files_only=local_only)
            except (OSError, ValueError) as err:
                raise unavailable_error(kind, name, key, local_only, err) from None

    @property
    def loaded(self) -> bool:
        return self._det_model is not None

    def load(self) -> None:
        """Load both models and processors (idempotent); called by the first `segment`."""
        if self.loaded:
            return
        import transformers
        from transformers import AutoConfig, AutoProcessor, GroundingDinoForObjectDetection

        local_only = hub_offline(self.local_files_only)

        def get(kind, name, key, loader):
            try:
                return loader.from_pretrained(os.path.expanduser(name), local_files_only=local_only)
            except (OSError, ValueError) as err:
                raise unavailable_error(kind, name, key, local_only, err) from None

        det_proc = get("GroundingDINO", self.detector, "detector", AutoProcessor)
        det_model = get("GroundingDINO", self.detector, "detector", GroundingDinoForObjectDetection)
        sam2 = get("SAM", self.sam, "sam", AutoConfig).model_type == "sam2"
        if sam2 and not hasattr(transformers, "Sam2Model"):
            raise ModelUnavailableError(f"segmenter.backend.sam={self.sam} is SAM 2, which transformers "
                                        f"{transformers.__version__} does not have: upgrade transformers")
        try:
            sam_proc = get("SAM", self.sam, "sam", transformers.Sam2Processor if sam2 else transformers.SamProcessor)
        except ImportError as err:  # SAM 2's image processor needs torchvision
            raise ModelUnavailableError(f"segmenter.backend.sam={self.sam}: {brief(err)} "
                                        "(.venv-gsam has torchvision: make test-gsam)") from None
        sam_model = get("SAM", self.sam, "sam", transformers.Sam2Model if sam2 else transformers.SamModel)
        self._install(det_model, det_proc, sam_model, sam_proc)

    def _install(self, det_model, det_proc, sam_model, sam_proc) -> None:
        device = self.torch_device
        self._det_model = det_model.to(device=device, dtype=self.det_dtype).eval()
        self._sam_model = sam_model.to(device=device, dtype=self.sam_dtype).eval()
        self._det_proc, self._sam_proc = det_proc, sam_proc
        # SAM 2: multi-scale image embeddings, no reshaped input sizes
        self._sam2 = getattr(getattr(sam_model, "config", None), "model_type", "sam") == "sam2"
        self._non_word_ids = non_word_token_ids(det_proc.tokenizer)
        params = inspect.signature(det_proc.post_process_grounded_object_detection).parameters
        # transformers renamed box_threshold -> threshold (4.47); accept either.
        self._threshold_kw = "threshold" if "threshold" in params else "box_threshold"

    # -- the two model calls -----------------------------------------------------------------------------------

    def detect(self, images: list[PIL.Image.Image], phrases: list[str]) -> list[Detections]:
        """One forward for the pairs (images padded together, one phrase per sample)."""

        proc, model, device = self._det_proc, self._det_model, self.torch_device
        inputs = proc(images=images, text=list(phrases), return_tensors="pt", padding="longest")
        input_ids = inputs["input_ids"]
        inputs = {k: (v.to(device=device, dtype=self.det_dtype) if v.is_floating_point() else v.to(device))
                  for k, v in inputs.items()}
        out = model(**inputs)
        logits = out.logits.float()  # (n, q, max_text_len); -inf outside the prompt
        sizes = [(im.height, im.width) for im in images]
        # The processor converts the boxes (centre -> corners, original pixels). threshold=-1 keeps every
        # query in query order; the thresholds are applied in filter_detections (inclusive, text-aware).
        results = proc.post_process_grounded_object_detection(
            types.SimpleNamespace(logits=logits, pred_boxes=out.pred_boxes.float()), input_ids.to(device),
            **{self._threshold_kw: -1.0}, text_threshold=1.0, target_sizes=sizes)
        box_scores, text_scores = query_scores(logits.sigmoid(), inputs["input_ids"], inputs["attention_mask"],
                                               self._non_word_ids)
        dets = []
        for i, (res, (h, w)) in enumerate(zip(results, sizes)):
            boxes = res["boxes"]
            if boxes.shape[0] != logits.shape[1]:
                raise RuntimeError("post_process_grounded_object_detection dropped queries at threshold -1; "
                                   "this transformers version is not supported")
            dets.append(Detections.clipped(boxes.float().cpu().numpy(), (w, h), box_scores[i], text_scores[i]))
        return dets

    def segment(self, images: list[PIL.Image.Image], boxes: list[list[np.ndarray]]) -> list[list[np.ndarray | None]]:
        """One SAM image-encoder batch for the images with a box, then the decoder per chunk of boxes."""
        import torch

        proc, model, device, dtype = self._sam_proc, self._sam_model, self.torch_device, self.sam_dtype
        result: list[list[np.ndarray | None]] = [[None] * len(b) for b in boxes]
        flat = [np.concatenate(b, 0) if b else np.zeros((0, 4), np.float32) for b in boxes]
        sel = [i for i, f in enumerate(flat) if len(f)]  # images without any box skip SAM entirely
        if not sel:
            return result
        # SamProcessor needs the same number of boxes per image: pad with copies of the first box; only the
        # first len(flat[i]) boxes of image i are decoded.
        n_max = max(len(flat[i]) for i in sel)
        padded = [np.concatenate([flat[i], np.repeat(flat[i][:1], n_max - len(flat[i]), 0)], 0).tolist()
                  for i in sel]
        enc = proc(images=[images[i] for i in sel], input_boxes=padded, return_tensors="pt")
        emb = model.get_image_embeddings(enc["pixel_values"].to(device=device, dtype=dtype))  # SAM 2: a list
        for k, i in enumerate(sel):
            f = flat[i]
            owner = torch.as_tensor(np.concatenate([np.full(len(b), j) for j, b in enumerate(boxes[i])]),
                                    device=device, dtype=torch.long)
            union = None
            for s in range(0, len(f), self.sam_box_chunk):
                e = min(s + self.sam_box_chunk, len(f))
                # boxes stay float32: SAM normalises them to [0, 1] before casting to its own dtype
                prompt = enc["input_boxes"][k:k + 1, s:e].to(device=device, dtype=torch.float32)
                image_emb = [e[k:k + 1] for e in emb] if self._sam2 else emb[k:k + 1]
                out = model(image_embeddings=image_emb, input_boxes=prompt, multimask_output=self.multimask)
                best = select_best_masks(out.pred_masks[0].float(), out.iou_scores[0].float())  # (n, h, w)
                sizes = [enc["original_sizes"][k:k + 1]]
                if not self._sam2:  # SAM 2's third argument is mask_threshold
                    sizes.append(enc["reshaped_input_sizes"][k:k + 1])
                masks = proc.post_process_masks([best[:, None]], *sizes)[0][:, 0]  # (n, H, W)
                part = union_instances(masks.bool(), owner[s:e], len(boxes[i]))
                union = part if union is None else union | part
            union = union.cpu().numpy()
            for j, b in enumerate(boxes[i]):
                if len(b):
                    result[i][j] = union[j]
        return result


class GroundedSam(Segmenter):
    """The Grounded-SAM recipe over a backend: GroundingDINO boxes per word (one query per word, inclusive box
    and text thresholds) -> SAM masks -> union per word, with exclusions for words without a box or mask."""

    meaningful = True

    def __init__(self, backend: GroundingBackend, box_threshold: float = 0.35, text_threshold: float = 0.25,
                 batch_size: int = 4, progress: bool = True) -> None:
        """
        backend: the models (`TransformersGrounding`, `bench.grounded_sam_original.OriginalGrounding`).
        box_threshold / text_threshold: inclusive GroundingDINO thresholds (Grounded-SAM defaults).
        batch_size: images per SAM batch and (image, word) pairs per detector batch.
        progress: show a tqdm bar over images.
        """
        if batch_size < 1:
            raise ValueError("segmenter.batch_size must be >= 1")
        self.backend = backend
        self.name = backend.name
        self.box_threshold = float(box_threshold)
        self.text_threshold = float(text_threshold)
        self.batch_size = int(batch_size)
        self.progress = bool(progress)

    def check_available(self) -> None:
        if not self.backend.loaded:
            self.backend.check_available()

    def segment(self, images: list[PIL.Image.Image], words: list[list[str]],
                records: list[dict] | None = None) -> list[dict[str, WordMask]]:
        """For each image, {word: WordMask} with the union of SAM masks of the word's GroundingDINO boxes."""
        import torch
        from tqdm.auto import tqdm

        if len(images) != len(words):
            raise ValueError(f"{len(images)} images but {len(words)} word lists")
        out: list[dict[str, WordMask]] = [{} for _ in images]
        if not images:
            return out
        self.backend.load()
        with torch.inference_mode(), tqdm(total=len(images), desc="grounded-sam", unit="img",
                                          disable=not self.progress) as bar:
            for start in range(0, len(images), self.batch_size):
                idx = list(range(start, min(start + self.batch_size, len(images))))
                self._segment_batch([images[i].convert("RGB") for i in idx], [words[i] for i in idx],
                                    [out[i] for i in idx])
                bar.update(len(idx))
        return out

    def _segment_batch(self, images, words, out) -> None:
        # unique phrases per image, in order; words sharing a phrase share its result
        phrases = []
        for b, ws in enumerate(words):
            seen: list[str] = []
            for w in ws:
                p = word_to_phrase(w)
                if not p:
                    out[b][w] = WordMask(mask=None, reason=EMPTY_WORD)
                elif p not in seen:
                    seen.append(p)
            phrases.append(seen)
        pairs = [(b, j) for b, ps in enumerate(phrases) for j in range(len(ps))]
        kept: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s:s + self.batch_size]
            dets = self.backend.detect([images[b] for b, _ in chunk], [phrases[b][j] for b, j in chunk])
            for pair, d in zip(chunk, dets):
                kept[pair] = filter_detections(d.boxes, d.box_scores, d.text_scores,
                                               self.box_threshold, self.text_threshold)
        boxes = [[kept[(b, j)][0] for j in range(len(ps))] for b, ps in enumerate(phrases)]
        unions = self.backend.segment(images, boxes)
        for b, ws in enumerate(words):
            for w in ws:
                p = word_to_phrase(w)
                if p:
                    j = phrases[b].index(p)
                    out[b][w] = make_word_mask(unions[b][j], *kept[(b, j)])
