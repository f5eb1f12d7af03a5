"""Full-size random-weight Grounded-SAM (bench.grounded_sam_random): the released architectures, checked by their
parameter counts (built on the meta device, no memory) and their layer counts and widths."""

import pytest
import torch
from transformers import GroundingDinoForObjectDetection, SamModel

from bench.grounded_sam_random import RandomGrounding, grounding_dino_config, random_grounded_sam, sam_vit_h_config


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# published sizes: grounding-dino-tiny 172M and sam-vit-huge 641M parameters (the Hub's model cards);
# grounding-dino-base's model.safetensors is 933 MB in fp32 = 232.3M parameters + 0.5M int64 Swin-B
# relative-position indices (24 blocks x 144^2 x 8 bytes = 4.0 MB)
@pytest.mark.parametrize(("backbone", "millions", "swin_millions"), [("swin-t", 172.3, 27.5), ("swin-b", 232.3, 86.9)])
def test_grounding_dino_configs_have_the_released_parameter_counts(backbone, millions, swin_millions):
    with torch.device("meta"):
        model = GroundingDinoForObjectDetection(grounding_dino_config(backbone))
    assert round(n_params(model) / 1e6, 1) == millions
    assert round(n_params(model.model.backbone) / 1e6, 1) == swin_millions  # Swin-T 28M / Swin-B 88M less the head
    assert round(n_params(model.model.text_backbone) / 1e6, 1) == 108.9  # bert-base-uncased without its pooler's use


def test_sam_vit_h_config_has_the_released_parameter_count():
    with torch.device("meta"):
        model = SamModel(sam_vit_h_config())
    assert round(n_params(model) / 1e6) == 641
    assert round(n_params(model.vision_encoder) / 1e6) == 637  # ViT-H/16 image encoder + neck


def test_layer_counts_and_widths():
    base, tiny = grounding_dino_config("swin-b"), grounding_dino_config("swin-t")
    assert (base.backbone_config.embed_dim, base.backbone_config.depths, base.backbone_config.window_size) == (
        128, [2, 2, 18, 2], 12)
    assert (tiny.backbone_config.embed_dim, tiny.backbone_config.depths, tiny.backbone_config.window_size) == (
        96, [2, 2, 6, 2], 7)
    for cfg in (base, tiny):
        assert (cfg.d_model, cfg.num_queries, cfg.encoder_layers, cfg.decoder_layers, cfg.num_feature_levels) == (
            256, 900, 6, 6, 4)
        assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size) == (
            768, 12, 30522)
    vision = sam_vit_h_config().vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.mlp_dim) == (
        1280, 32, 16, 5120)
    assert vision.global_attn_indexes == [7, 15, 23, 31] and vision.image_size == 1024
    with pytest.raises(ValueError, match="swin-b"):
        RandomGrounding(backbone="swin-l")


def test_builds_lazily_on_meta_with_the_released_input_sizes():
    backend = RandomGrounding(words=["cat"], prompts="data/smoke/prompts.jsonl", backbone="swin-t", device="meta")
    segmenter = random_grounded_sam(backend)
    assert segmenter.meaningful is False and segmenter.name == "grounded_sam_random_swint"
    segmenter.check_available()  # nothing to download
    assert not backend.loaded  # instantiating builds nothing
    backend.load()
    assert backend._det_model.config.backbone_config.embed_dim == 96
    assert backend._det_proc.image_processor.size["shortest_edge"] == 800
    assert backend._sam_proc.image_processor.size["longest_edge"] == 1024
    assert backend._det_proc.tokenizer.tokenize("a cat on a sofa") == ["[UNK]", "cat", "[UNK]", "[UNK]", "sofa"]


def test_segments_end_to_end_with_small_configs_and_passes_the_best_boxes(monkeypatch):
    """RandomGrounding's own code (lazy build, processors, the boxes_per_word cut) on the tiny configs: the
    full-size ones need ~15 GiB of host memory for one 800 px detection on CPU."""
    from fixtures_segment import small_images

    import bench.grounded_sam_random as module
    from bench.grounded_sam_tiny import tiny_detector, tiny_sam

    monkeypatch.setattr(module, "grounding_dino_config", lambda backbone: tiny_detector(["cat", "dog"])[0].config)
    monkeypatch.setattr(module, "sam_vit_h_config", lambda: tiny_sam()[0].config)
    backend = RandomGrounding(words=["cat", "dog"], backbone="swin-t", device="cpu", boxes_per_word=2)
    segmenter = random_grounded_sam(backend, progress=False)
    images = small_images()[:2]
    backend.load()
    with torch.inference_mode():
        dets = backend.detect(images, ["cat .", "dog ."])
    for det in dets:
        passed = (det.box_scores >= segmenter.box_threshold) & (det.text_scores >= segmenter.text_threshold)
        assert passed.sum() == 2 and (det.box_scores[~passed] == 0).all()
    masks = segmenter.segment(images, [["cat"], ["dog", "cat"]], [{}, {}])
    assert [sorted(m) for m in masks] == [["cat"], ["cat", "dog"]]
    assert all(wm.mask is not None and wm.mask.shape == (im.height, im.width) and len(wm.boxes) <= 2
               for im, per_word in zip(images, masks) for wm in per_word.values())
