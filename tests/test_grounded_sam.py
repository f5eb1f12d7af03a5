"""GroundedSam (GroundingDINO boxes -> SAM masks per word) on tiny random models and on hand-made inputs.

Nothing is downloaded: models are built from small configs, processors from a hand-written vocab.txt."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import PIL.Image
import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures_segment import WORDS, small_images  # noqa: E402
from mask_agreement import mask_iou, score_masks, summarise_mask_agreement  # noqa: E402

from bench.grounded_sam import (  # noqa: E402
    EMPTY_MASK,
    EMPTY_WORD,
    NO_DETECTION,
    GroundedSam,
    TransformersGrounding,
    filter_detections,
    make_word_mask,
    select_best_masks,
    union_instances,
    word_to_phrase,
)
from bench.grounded_sam_tiny import tiny_detector, tiny_sam, tiny_sam2  # noqa: E402
from bench.segment import WordMask  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf" / "segmenter" / "grounded_sam.yaml"
BACKEND_KEYS = {"device", "dtype", "detector_dtype", "local_files_only", "multimask", "sam_box_chunk"}


def grounded(det, det_proc, sam_model, sam_proc, **kwargs) -> GroundedSam:
    """The recipe over the transformers backend wrapping built models; each keyword goes to the one taking it."""
    backend = TransformersGrounding.from_models(det, det_proc, sam_model, sam_proc,
                                                **{k: v for k, v in kwargs.items() if k in BACKEND_KEYS})
    return GroundedSam(backend, **{k: v for k, v in kwargs.items() if k not in BACKEND_KEYS})


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def detector():
    return tiny_detector(WORDS)


@pytest.fixture(scope="module")
def sam():
    return tiny_sam()


def _check(result, images, words):
    assert len(result) == len(images)
    for im, ws, res in zip(images, words, result):
        assert set(res) == set(ws)
        for wm in res.values():
            assert isinstance(wm, WordMask)
            if wm.mask is None:
                assert wm.reason in (NO_DETECTION, EMPTY_MASK)
            else:
                assert wm.mask.shape == (im.height, im.width) and wm.mask.dtype == bool and wm.mask.any()
                assert wm.boxes.shape == (len(wm.scores), 4) and len(wm.scores) > 0


# ---------------------------------------------------------------------------------------------------
# hand-made inputs, no models


def test_word_to_phrase():
    assert word_to_phrase("Cat") == "cat."
    assert word_to_phrase("  Teddy   Bear ") == "teddy bear."
    assert word_to_phrase("cats.") == "cats."
    assert word_to_phrase("   ") == ""


def test_filter_detections_inclusive_box_and_text_thresholds():
    boxes = np.arange(16, dtype=np.float32).reshape(4, 4)
    box_scores = np.array([0.35, 0.9, 0.34, 0.8])
    text_scores = np.array([0.25, 0.1, 0.9, 0.3])
    kept, scores = filter_detections(boxes, box_scores, text_scores, 0.35, 0.25)
    np.testing.assert_array_equal(kept, boxes[[0, 3]])  # 1: text too low, 2: box too low
    np.testing.assert_allclose(scores, [0.35, 0.8])
    assert filter_detections(boxes, box_scores, text_scores, 0.0, 0.0)[0].shape == (4, 4)
    assert filter_detections(boxes, box_scores, text_scores, 1.01, 1.01)[0].shape == (0, 4)
    assert filter_detections(np.zeros((0, 4)), [], [], 0.35, 0.25)[0].shape == (0, 4)


def test_union_instances_per_word():
    masks = torch.zeros((3, 4, 5), dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 3, 4] = masks[2, 1, 1] = True
    owner = torch.tensor([0, 0, 2])
    out = union_instances(masks, owner, 3)
    assert out.shape == (3, 4, 5)
    assert out[0].sum() == 2 and out[0, 0, 0] and out[0, 3, 4]
    assert not out[1].any()  # word 1 had no box
    assert torch.equal(out[2], masks[2])


def test_select_best_masks_by_iou():
    pred = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.2], [0.7, 0.1, 0.3]])
    best = select_best_masks(pred, iou)
    assert torch.equal(best[0], pred[0, 1]) and torch.equal(best[1], pred[1, 0])


def test_make_word_mask_reasons():
    box = np.array([[0, 0, 2, 2]], np.float32)
    assert make_word_mask(None, np.zeros((0, 4)), []).reason == NO_DETECTION
    empty = make_word_mask(np.zeros((3, 3), bool), box, [0.5])
    assert empty.reason == EMPTY_MASK and empty.mask is None and len(empty.boxes) == 1
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    ok = make_word_mask(m, box, [0.5])
    assert ok.reason is None and ok.mask.dtype == bool and ok.mask.sum() == 1


def test_mask_iou_and_score_masks_hand_computed():
    a = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 px
    b = np.zeros((4, 4), bool)
    b[0, 1:4] = True  # 3 px, overlap 2, union 4
    assert mask_iou(a, b) == pytest.approx(0.5)
    assert np.isnan(mask_iou(np.zeros((2, 2)), np.zeros((2, 2))))
    assert mask_iou(a, np.zeros((4, 4), bool)) == 0.0
    with pytest.raises(ValueError):
        mask_iou(a, np.zeros((3, 3), bool))

    c = np.zeros((4, 4), bool)
    c[:2, :2] = True  # 4 px; vs a: overlap 2, union 5
    pred = [{"cat": WordMask(a), "dog": WordMask(None, NO_DETECTION)},
            {"sky": WordMask(c), "sun": WordMask(np.zeros((4, 4), bool)), "tree": WordMask(a)}]
    ref = [{"cat": WordMask(b), "dog": WordMask(b)},
           {"sky": WordMask(a), "sun": WordMask(np.zeros((4, 4), bool)), "car": WordMask(a)}]
    df = score_masks(pred, ref)
    assert list(df["word"]) == ["cat", "dog", "sky", "sun", "tree", "car"]
    row = df.set_index("word")
    assert row.loc["cat", "iou"] == pytest.approx(0.5) and pd.isna(row.loc["cat", "reason"])
    assert row.loc["sky", "iou"] == pytest.approx(2 / 5)
    assert row.loc["dog", "reason"] == f"pred: {NO_DETECTION}" and np.isnan(row.loc["dog", "iou"])
    assert row.loc["sun", "reason"] == "both masks empty"
    assert row.loc["tree", "reason"] == "ref: missing" and row.loc["car", "reason"] == "pred: missing"
    assert row.loc["cat", "pred_area"] == 3 and row.loc["sky", "ref_area"] == 3

    summary = summarise_mask_agreement(df)
    assert summary["mean_iou"] == pytest.approx((0.5 + 0.4) / 2)
    assert summary["n"] == 2 and summary["n_pairs"] == 6 and summary["n_excluded"] == 4
    assert summary["excluded"] == {"both masks empty": 1, f"pred: {NO_DETECTION}": 1, "pred: missing": 1,
                                   "ref: missing": 1}
    assert np.isnan(summarise_mask_agreement(df.iloc[1:2])["mean_iou"])
    with pytest.raises(ValueError):
        score_masks(pred, ref[:1])


# ---------------------------------------------------------------------------------------------------
# fake models (hand-made logits and masks) behind the real processors


class FakeDetector(torch.nn.Module):
    """GroundingDINO stand-in: records each sample's phrase; boxes depend on that phrase only.

    For a phrase with k boxes: queries 0..k-1 score high on the first word token (kept), query k scores
    high only on "." (box score high, text score low: dropped), the rest score low everywhere."""

    def __init__(self, tokenizer, boxes_by_phrase: dict[str, list[tuple[float, float, float, float]]],
                 n_queries: int = 4, max_text_len: int = 32):
        super().__init__()
        self.tok, self.boxes_by_phrase = tokenizer, boxes_by_phrase
        self.n_queries, self.max_text_len = n_queries, max_text_len
        self.calls: list[list[str]] = []

    def phrase(self, ids, mask) -> str:
        special = {self.tok.cls_token_id, self.tok.sep_token_id, self.tok.pad_token_id}
        ids = ids.tolist()
        toks = [t for i, t, m in zip(ids, self.tok.convert_ids_to_tokens(ids), mask.tolist())
                if m and i not in special]
        return " ".join(toks).replace(" .", ".")

    def forward(self, input_ids, attention_mask, pixel_values, **kwargs):
        n, seq = input_ids.shape
        phrases = [self.phrase(input_ids[i], attention_mask[i]) for i in range(n)]
        self.calls.append(phrases)
        dot = self.tok.convert_tokens_to_ids(".")
        logits = torch.full((n, self.n_queries, self.max_text_len), float("-inf"))
        logits[:, :, :seq] = torch.where(attention_mask.bool()[:, None, :], -5.0, float("-inf"))
        pred = torch.tensor([0.5, 0.5, 1.0, 1.0]).repeat(n, self.n_queries, 1)
        for i, p in enumerate(phrases):
            k = 0
            for k, box in enumerate(self.boxes_by_phrase.get(p, [])):
                logits[i, k, 1] = 3.0  # position 1: the first word token after [CLS]
                pred[i, k] = torch.tensor(box)
            if self.boxes_by_phrase.get(p):
                dot_pos = (input_ids[i] == dot).nonzero()[0, 0]
                logits[i, k + 1, dot_pos] = 3.0
        return types.SimpleNamespace(logits=logits, pred_boxes=pred)


class FakeSam(torch.nn.Module):
    """SAM stand-in: the best candidate mask is the prompt box's rectangle (or nothing when `empty`)."""

    def __init__(self, pad: int = 64, low: int = 16, empty: bool = False):
        super().__init__()
        self.pad, self.low, self.empty = pad, low, empty
        self.n_forward = 0

    def get_image_embeddings(self, pixel_values):
        return torch.zeros((pixel_values.shape[0], 1, 1, 1), dtype=pixel_values.dtype)

    def forward(self, image_embeddings, input_boxes, multimask_output=True):
        self.n_forward += 1
        centres = (torch.arange(self.low) + 0.5) * self.pad / self.low
        boxes = input_boxes[0].float()
        x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
        inside = ((centres[None, None, :] >= x0) & (centres[None, None, :] <= x1)
                  & (centres[None, :, None] >= y0) & (centres[None, :, None] <= y1))
        rect = torch.where(inside & (not self.empty), 10.0, -10.0)
        cands = torch.stack([torch.full_like(rect, -10.0), rect, torch.full_like(rect, 10.0)], 1)
        iou = torch.tensor([0.1, 0.9, 0.5]).repeat(len(boxes), 1)
        if not multimask_output:
            cands, iou = cands[:, 1:2], iou[:, 1:2]
        return types.SimpleNamespace(pred_masks=cands[None], iou_scores=iou[None])


def _rect(shape, box):
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    x0, y0, x1, y1 = box
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


BOXES = {"cat.": [(0.25, 0.5, 0.5, 1.0)],  # left half
         "dog.": [(0.75, 0.5, 0.5, 1.0)],  # right half
         "teddy bear.": [(0.25, 0.25, 0.5, 0.5), (0.75, 0.75, 0.5, 0.5)],  # two opposite quarters
         "sky.": [(0.5, 0.2, 1.0, 0.4)]}


@pytest.fixture()
def fakes(detector, sam):
    _, det_proc = detector
    _, sam_proc = sam
    fake_det = FakeDetector(det_proc.tokenizer, BOXES)
    fake_sam = FakeSam(pad=sam_proc.image_processor.pad_size["height"])
    return fake_det, det_proc, fake_sam, sam_proc


def test_fake_pipeline_boxes_union_and_phrase_isolation(fakes):
    fake_det, det_proc, fake_sam, sam_proc = fakes
    gs = grounded(fake_det, det_proc, fake_sam, sam_proc, batch_size=2, progress=False)
    images = [PIL.Image.new("RGB", (64, 48)), PIL.Image.new("RGB", (40, 56)), PIL.Image.new("RGB", (32, 32))]
    words = [["cat", "Dog", "Teddy Bear"], ["dog", "unicorn"], []]
    out = gs.segment(images, words)

    # every detector sample carried exactly one phrase, each (image, word) pair was queried once
    flat = [p for call in fake_det.calls for p in call]
    assert all(len(call) <= 2 for call in fake_det.calls)
    assert sorted(flat) == sorted(["cat.", "dog.", "teddy bear.", "dog.", "[UNK]."])
    assert all(p.count(".") == 1 and p.endswith(".") for p in flat)

    assert out[2] == {}
    assert out[1]["unicorn"].reason == NO_DETECTION
    h, w = 48, 64
    cat, dog, bear = out[0]["cat"], out[0]["Dog"], out[0]["Teddy Bear"]
    np.testing.assert_allclose(cat.boxes, [[0, 0, 32, 48]], atol=1e-4)  # centre/size -> xyxy pixels
    np.testing.assert_allclose(cat.scores, [torch.sigmoid(torch.tensor(3.0)).item()], rtol=1e-5)
    assert len(bear.boxes) == 2  # the "."-only query was dropped by text_threshold
    for wm, boxes in ((cat, cat.boxes), (dog, dog.boxes), (bear, bear.boxes)):
        expected = np.any([_rect((h, w), b) for b in boxes], axis=0)
        assert wm.mask.shape == (h, w) and wm.mask.dtype == bool
        assert mask_iou(wm.mask, expected) > 0.8
    # boxes of one word never leak into another word's mask
    assert not cat.mask[:, 40:].any() and not dog.mask[:, :24].any()
    dog1 = out[1]["dog"]
    assert dog1.mask.shape == (56, 40) and mask_iou(dog1.mask, _rect((56, 40), dog1.boxes[0])) > 0.8


def test_fake_pipeline_no_detection_and_empty_cases(fakes):
    fake_det, det_proc, _, sam_proc = fakes
    empty_sam = FakeSam(pad=sam_proc.image_processor.pad_size["height"], empty=True)
    gs = grounded(fake_det, det_proc, empty_sam, sam_proc, progress=False)
    blank = PIL.Image.new("RGB", (30, 20))
    out = gs.segment([blank, blank, blank], [["sky"], ["unicorn", "  "], []])
    assert out[0]["sky"].reason == EMPTY_MASK and len(out[0]["sky"].boxes) == 1
    assert out[1]["unicorn"].reason == NO_DETECTION and out[1]["  "].reason == EMPTY_WORD
    assert out[2] == {}
    assert gs.segment([], []) == []

    # nothing detected anywhere: SAM is never run
    sam2 = FakeSam(pad=sam_proc.image_processor.pad_size["height"])
    gs2 = grounded(fake_det, det_proc, sam2, sam_proc, progress=False)
    out = gs2.segment([blank, blank], [["unicorn"], ["tree"]])
    assert [o[w].reason for o, w in zip(out, ["unicorn", "tree"])] == [NO_DETECTION, NO_DETECTION]
    assert sam2.n_forward == 0
    # thresholds above every score: excluded, not empty masks
    gs3 = grounded(fake_det, det_proc, sam2, sam_proc, box_threshold=0.96, progress=False)
    assert gs3.segment([blank], [["cat"]])[0]["cat"].reason == NO_DETECTION


def test_fake_pipeline_single_mask_output(fakes):
    fake_det, det_proc, fake_sam, sam_proc = fakes
    gs = grounded(fake_det, det_proc, fake_sam, sam_proc, multimask=False, sam_box_chunk=1,
                                 progress=False)
    im = PIL.Image.new("RGB", (64, 48))
    wm = gs.segment([im], [["teddy bear"]])[0]["teddy bear"]
    expected = np.any([_rect((48, 64), b) for b in wm.boxes], axis=0)
    assert mask_iou(wm.mask, expected) > 0.8 and fake_sam.n_forward == 2  # one decoder call per box


# ---------------------------------------------------------------------------------------------------
# tiny random-weight transformers models, whole stage


def test_tiny_models_whole_stage(detector, sam):
    det, det_proc = detector
    sam_model, sam_proc = sam
    images = small_images()
    words = [["cat", "teddy bear"], ["dog"], ["sky"]]
    calls = []
    hook = det.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].clone()),
                                         with_kwargs=True)
    try:
        default = grounded(det, det_proc, sam_model, sam_proc, batch_size=2, progress=False)
        _check(default.segment(images, words), images, words)

        everything = grounded(det, det_proc, sam_model, sam_proc, box_threshold=0.0,
                                             text_threshold=0.0, progress=False)
        out = everything.segment(images, words)
        _check(out, images, words)
        assert all(wm.mask is not None for res in out for wm in res.values())
        assert all(len(wm.boxes) == det.config.num_queries for res in out for wm in res.values())

        calls.clear()
        nothing = grounded(det, det_proc, sam_model, sam_proc, box_threshold=1.01,
                                          text_threshold=1.01, progress=False)
        out = nothing.segment(images, words)
        assert all(wm.reason == NO_DETECTION for res in out for wm in res.values())
    finally:
        hook.remove()
    texts = sorted(det_proc.tokenizer.decode(ids, skip_special_tokens=True).replace(" .", ".")
                   for c in calls for ids in c)
    assert texts == sorted(["cat.", "teddy bear.", "dog.", "sky."])


def test_tiny_models_batching_does_not_change_results(detector, sam):
    det, det_proc = detector
    sam_model, sam_proc = sam
    rng = np.random.default_rng(1)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    words = [["cat", "dog"], ["sky"], ["dog"]]
    kw = dict(box_threshold=0.3, text_threshold=0.2, progress=False)
    one = grounded(det, det_proc, sam_model, sam_proc, batch_size=1, **kw)
    many = grounded(det, det_proc, sam_model, sam_proc, batch_size=4, **kw)
    one, many = one.segment(images, words), many.segment(images, words)
    for a, b in zip(one, many):
        for w in a:
            assert a[w].reason == b[w].reason
            np.testing.assert_allclose(a[w].boxes, b[w].boxes, atol=1e-3)
            np.testing.assert_allclose(a[w].scores, b[w].scores, atol=1e-4)
            if a[w].mask is not None:
                assert mask_iou(a[w].mask, b[w].mask) > 0.98


def test_tiny_models_bfloat16_sam(detector, sam):
    det, det_proc = detector
    sam_model, sam_proc = tiny_sam()  # own copy: the module's copy stays float32
    gs = grounded(det, det_proc, sam_model, sam_proc, dtype="bfloat16", box_threshold=0.0,
                                 text_threshold=0.0, progress=False)
    assert gs.backend.sam_dtype == torch.bfloat16 and gs.backend.det_dtype == torch.float32
    images = small_images()[:1]
    _check(gs.segment(images, [["cat"]]), images, [["cat"]])


# ---------------------------------------------------------------------------------------------------
# loading and config


def test_defaults_resolve_on_cpu():
    backend = TransformersGrounding()
    assert not backend.loaded  # lazy: nothing loaded at construction
    if not torch.cuda.is_available():
        assert backend.torch_device.type == "cpu" and backend.sam_dtype == torch.float32
    assert backend.det_dtype == torch.float32
    with pytest.raises(ValueError):
        TransformersGrounding(dtype="float8")


@pytest.mark.parametrize("local_files_only", [True, None])
def test_missing_model_one_line_error(local_files_only):
    name = "no-such-org/no-such-grounding-dino"
    gs = GroundedSam(TransformersGrounding(detector=name, local_files_only=local_files_only), progress=False)
    for call in (gs.check_available, lambda: gs.segment([PIL.Image.new("RGB", (8, 8))], [["cat"]])):
        with pytest.raises(RuntimeError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and f"'{name}'" in msg and "GroundingDINO" in msg
        assert "hf download" in msg and "segmenter.backend.detector=" in msg
        assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_local_path_error(tmp_path):
    backend = TransformersGrounding(detector=str(tmp_path / "grounding-dino"), sam=str(tmp_path / "missing-sam"))
    gs = GroundedSam(backend)
    with pytest.raises(RuntimeError, match=r"^GroundingDINO local copy '.*grounding-dino' does not exist"):
        gs.check_available()


def test_hydra_config_matches_constructor():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF)
    assert cfg._target_ == "bench.grounded_sam.GroundedSam"
    assert cfg.backend._target_ == "bench.grounded_sam.TransformersGrounding"
    for node, cls in ((cfg, GroundedSam), (cfg.backend, TransformersGrounding)):
        params = inspect.signature(cls.__init__).parameters
        assert set(node) - {"_target_"} == set(params) - {"self"}
        for key, value in node.items():
            if key not in ("_target_", "backend"):
                assert params[key].default == value, key
    gs = instantiate(cfg)
    assert isinstance(gs, GroundedSam) and not gs.backend.loaded and gs.name == "grounded_sam"
    assert gs.backend.detector == "IDEA-Research/grounding-dino-base" and gs.backend.sam == "facebook/sam-vit-huge"


@pytest.mark.skipif(not (importlib.util.find_spec("torchvision") and hasattr(transformers, "Sam2Model")),
                    reason="SAM 2's image processor needs torchvision: runs in .venv-gsam (make test-gsam)")
def test_sam2_masks_equal_its_own_full_forward(detector):
    """segmenter.backend.sam=<a SAM 2 checkpoint>: multi-scale embeddings per image, then the decoder per box chunk;
    reference: the model's one-call forward from pixels, best mask by predicted IoU, post-processed."""
    model, proc = tiny_sam2()
    segmenter = grounded(*detector, model, proc, device="cpu", progress=False, sam_box_chunk=1)
    images = small_images()
    boxes = [[np.array([[5, 5, 40, 30]], np.float32), np.array([[0, 0, 20, 20], [30, 10, 55, 39]], np.float32)],
             [], [np.zeros((0, 4), np.float32)]]
    with torch.inference_mode():
        unions = segmenter.backend.segment(images, boxes)
        enc = proc(images=images[:1], input_boxes=[np.concatenate(boxes[0]).tolist()], return_tensors="pt")
        out = model(pixel_values=enc["pixel_values"], input_boxes=enc["input_boxes"], multimask_output=True)
    best = select_best_masks(out.pred_masks[0], out.iou_scores[0])
    ref = proc.post_process_masks([best[:, None]], enc["original_sizes"])[0][:, 0].numpy()  # (3, H, W)
    assert unions[1] == [] and unions[2] == [None]
    assert np.array_equal(unions[0][0], ref[0]) and np.array_equal(unions[0][1], ref[1] | ref[2])
    segmenter.box_threshold = segmenter.text_threshold = 0.0
    result = segmenter.segment(images, [["cat"], ["dog"], ["sky"]])
    assert all(wm.mask.shape == (im.height, im.width) for im, r in zip(images, result) for wm in r.values())
