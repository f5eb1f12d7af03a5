"""segmenter=grounded_sam_original (groundingdino-py + segment-anything) in its own environment.

`make test-gsam` builds .venv-gsam (pins in the Makefile) and runs this file there. In the default
environment the packages are absent: only the one-line error is checked and the rest skips, saying why.
Models are tiny and random (built from configs, nothing downloaded) but load through the real loading
path: a groundingdino-py config file, checkpoint files and a BERT folder.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_segment import WORDS, small_images  # noqa: E402

from bench import ModelUnavailableError  # noqa: E402
from bench.grounded_sam import NO_DETECTION, GroundedSam  # noqa: E402
from bench.grounded_sam_original import OriginalGrounding  # noqa: E402

HAVE_PACKAGES = all(importlib.util.find_spec(m) for m in ("groundingdino", "segment_anything", "torchvision"))
needs_packages = pytest.mark.skipif(not HAVE_PACKAGES, reason="groundingdino-py / segment-anything live in "
                                    ".venv-gsam: run `make test-gsam` (transformers < 5 and torchvision needed)")

TINY_CONFIG = """
modelname = "groundingdino"
backbone = "swin_T_224_1k"
position_embedding = "sine"
pe_temperatureH = 20
pe_temperatureW = 20
return_interm_indices = [1, 2, 3]
backbone_freeze_keywords = None
enc_layers = 1
dec_layers = 2
pre_norm = False
dim_feedforward = 32
hidden_dim = 256  # the text enhancer's position embedding is fixed at 256
dropout = 0.0
nheads = 2
num_queries = 12
query_dim = 4
num_patterns = 0
num_feature_levels = 4
enc_n_points = 1
dec_n_points = 1
two_stage_type = "standard"
two_stage_bbox_embed_share = False
two_stage_class_embed_share = False
transformer_activation = "relu"
dec_pred_bbox_embed_share = True
dn_box_noise_scale = 1.0
dn_label_noise_ratio = 0.5
dn_label_coef = 1.0
dn_bbox_coef = 1.0
embed_init_tgt = True
dn_labelbook_size = 2000
max_text_len = 256
text_encoder_type = "bert-base-uncased"
use_text_enhancer = True
use_fusion_layer = True
use_checkpoint = False
use_transformer_ckpt = False
use_text_cross_attention = True
text_dropout = 0.0
fusion_dropout = 0.0
fusion_droppath = 0.0
sub_sentence_present = True
"""


@pytest.mark.skipif(HAVE_PACKAGES, reason="the packages are installed here; the missing-package error needs an env "
                                          "without them (the default .venv)")
def test_without_the_packages_one_line_names_the_environment():
    segmenter = GroundedSam(OriginalGrounding("missing.pth", "missing_sam.pth"))  # building it imports nothing
    with pytest.raises(ModelUnavailableError) as err:
        segmenter.check_available()
    assert "\n" not in str(err.value) and "make test-gsam" in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "bench", "segmenter=grounded_sam_original"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "make test-gsam" in proc.stderr.strip().splitlines()[-1]


def tiny_sam():
    """segment-anything's Sam at 64 px with a 32-dim prompt space (its registry only builds the full sizes)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    dim, size, patch = 32, 64, 16
    return Sam(image_encoder=ImageEncoderViT(depth=1, embed_dim=32, img_size=size, mlp_ratio=2, num_heads=2,
                                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=patch,
                                             qkv_bias=True, use_rel_pos=True, global_attn_indexes=(0,),
                                             window_size=0, out_chans=dim),
               prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                            input_image_size=(size, size), mask_in_chans=4),
               mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
                                        iou_head_hidden_dim=16,
                                        transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32,
                                                                      num_heads=2)),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny BERT folder, a groundingdino-py config file and checkpoints saved from random tiny models."""
    if not HAVE_PACKAGES:
        pytest.skip("needs .venv-gsam")
    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("gsam")
    bert = root / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *WORDS]))
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(bert)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS) + 7, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(bert)
    (root / "tiny_gdino.py").write_text(TINY_CONFIG)
    args = SLConfig.fromfile(str(root / "tiny_gdino.py"))
    args.device, args.text_encoder_type = "cpu", str(bert)
    torch.manual_seed(0)
    torch.save({"model": build_model(args).state_dict()}, root / "gdino.pth")
    torch.save(tiny_sam().state_dict(), root / "sam.pth")
    return root


@pytest.fixture
def segmenter(files, monkeypatch):
    import segment_anything

    def build_tiny(checkpoint=None):
        import torch

        sam = tiny_sam()
        sam.load_state_dict(torch.load(checkpoint))
        return sam

    monkeypatch.setitem(segment_anything.sam_model_registry, "tiny", build_tiny)  # the registry only has full sizes
    return GroundedSam(OriginalGrounding(str(files / "gdino.pth"), str(files / "sam.pth"),
                                         groundingdino_config=str(files / "tiny_gdino.py"), sam_type="tiny",
                                         text_encoder=str(files / "bert"), image_size=64, max_size=96, device="cpu"),
                       progress=False)


@needs_packages
def test_missing_checkpoint_is_one_line(files):
    backend = OriginalGrounding(str(files / "nope.pth"), str(files / "sam.pth"),
                                groundingdino_config=str(files / "tiny_gdino.py"), text_encoder=str(files / "bert"))
    with pytest.raises(ModelUnavailableError) as err:
        GroundedSam(backend).check_available()
    assert "\n" not in str(err.value) and "segmenter.backend.groundingdino_checkpoint=" in str(err.value)

    import torch  # a file that is not a checkpoint of this config: refused, not loaded as random weights

    torch.save({"model": {}}, files / "empty.pth")
    backend = OriginalGrounding(str(files / "empty.pth"), str(files / "sam.pth"),
                                groundingdino_config=str(files / "tiny_gdino.py"), text_encoder=str(files / "bert"))
    with pytest.raises(ModelUnavailableError, match="matches only 0 of"):
        backend.load()


@needs_packages
def test_loads_from_files_and_segments_every_word(segmenter):
    import torch

    images, words = small_images(), [["cat", "dog"], ["teddy bear"], ["sky"]]
    segmenter.box_threshold = segmenter.text_threshold = 0.0  # every query passes: masks for every word
    t0 = time.perf_counter()
    result = segmenter.segment(images, words)
    seconds = time.perf_counter() - t0
    print(f"\ngrounded_sam_original, tiny models, CPU ({torch.get_num_threads()} threads): "
          f"{seconds / len(images) * 1e3:.0f} ms per image ({sum(map(len, words))} words)")
    for image, per_word, ws in zip(images, result, words):
        assert list(per_word) == ws
        for wm in per_word.values():
            assert wm.reason is None and wm.mask.shape == (image.height, image.width) and len(wm.boxes) == 12
    segmenter.box_threshold = 1.01  # nothing passes: excluded and counted, never an IoU of 0
    assert all(wm.reason == NO_DETECTION and wm.mask is None for r in segmenter.segment(images, words)
               for wm in r.values())


@needs_packages
def test_boxes_and_masks_match_the_packages_own_predict(segmenter):
    """Independent references: groundingdino's `predict` (boxes over box_threshold) and SamPredictor.predict."""
    import groundingdino.datasets.transforms as T
    import torch
    from groundingdino.util.inference import predict

    image = small_images()[0]
    backend = segmenter.backend
    backend.load()
    with torch.inference_mode():
        det = backend.detect([image], ["cat."])[0]
    mine = det.boxes[det.box_scores >= 0.5]
    tensor = T.Compose([T.RandomResize([64], max_size=96), T.ToTensor(),
                        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(image, None)[0]
    boxes, logits, _ = predict(backend._det_model, tensor, "cat", 0.5, 0.0, device="cpu")  # cxcywh, relative
    w, h = image.size
    ref = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1) * torch.tensor([w, h, w, h])
    ref = ref.numpy().copy()
    ref[:, [0, 2]], ref[:, [1, 3]] = ref[:, [0, 2]].clip(0, w), ref[:, [1, 3]].clip(0, h)
    assert 0 < len(mine) == len(ref) and np.allclose(mine, ref, atol=1e-4)

    box = mine[:1]
    with torch.inference_mode():
        union = backend.segment([image], [[box]])[0][0]
    predictor = backend._predictor
    predictor.set_image(np.asarray(image))
    masks, scores, _ = predictor.predict(box=box[0], multimask_output=True)
    assert union.shape == (h, w) and np.array_equal(union, masks[scores.argmax()])


@needs_packages
def test_whole_run_with_the_original_backend(files, segmenter, tmp_path, monkeypatch):
    """segmenter=grounded_sam_original inside a run (tiny_sdxl, 2 samples): masks cached, header names it."""
    import json

    from helpers import cfg_for

    from bench.run import run

    monkeypatch.chdir(REPO)
    cfg = cfg_for(["dataset.limit=2", "dataset.seeds=[0]", "model.generation.steps=2",
                   "segmenter=grounded_sam_original",
                   f"segmenter.backend.groundingdino_checkpoint={files / 'gdino.pth'}",
                   f"segmenter.backend.sam_checkpoint={files / 'sam.pth'}",
                   f"segmenter.backend.groundingdino_config={files / 'tiny_gdino.py'}",
                   "segmenter.backend.sam_type=tiny", f"segmenter.backend.text_encoder={files / 'bert'}",
                   "segmenter.backend.image_size=64", "segmenter.backend.max_size=96", "segmenter.box_threshold=0",
                   "segmenter.text_threshold=0", f"paths.cache={tmp_path / 'cache'}"])
    run(cfg, tmp_path / "run")  # the `segmenter` fixture registered sam_type "tiny"
    assert "pseudo ground truth: grounded_sam_original" in (tmp_path / "run" / "summary.md").read_text()
    metas = [json.loads(f.read_text()) for f in (tmp_path / "cache").glob("segment/*/masks/*.json")]
    assert len(metas) == 2 and all(m["reason"] is None and m["png"] for meta in metas for m in meta.values())


@needs_packages
def test_batching_does_not_change_detections(segmenter):
    """A batch of (image, phrase) pairs, several phrases per image and images of different sizes, gives each
    pair the boxes and scores of running it alone (images are never padded together)."""
    import torch

    image, other = small_images()[:2]
    pairs = [(image, "cat."), (other, "dog."), (image, "teddy bear.")]
    segmenter.backend.load()
    with torch.inference_mode():
        together = segmenter.backend.detect([im for im, _ in pairs], [p for _, p in pairs])
        alone = [segmenter.backend.detect([im], [p])[0] for im, p in pairs]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.box_scores, b.box_scores, atol=1e-5)
        np.testing.assert_allclose(a.text_scores, b.text_scores, atol=1e-5)
