"""Full-size random-weight GroundingDINO (Swin-T or Swin-B) and SAM ViT-H, built from their released configs on the
device without a download: `segmenter=grounded_sam_random` (the `RandomGrounding` backend), the real segmenter's compute
cost for the GPU rehearsal.

The architectures are those of IDEA-Research/grounding-dino-tiny and -base and facebook/sam-vit-huge, stated here
field by field (not taken from library defaults, which may drift); the processors use the released input sizes
(GroundingDINO: shorter side 800, longer at most 1333; SAM: longer side 1024, padded to 1024 x 1024). Weights are
seeded random, so the masks mean nothing (`meaningful = False`) and the detector's scores neither: the best
`boxes_per_word` queries per word are passed on to SAM, as a trained detector passes a few. The BERT vocabulary is
the given words plus the special tokens (the text encoder keeps bert-base's 30,522 embeddings).
"""

from __future__ import annotations

import numpy as np
import PIL.Image

from bench.grounded_sam import Detections, GroundedSam, TransformersGrounding
from bench.grounded_sam_tiny import word_tokenizer
from bench.prompts import load_prompt_set

# (embed_dim, depths, num_heads, window_size, image_size) of the Swin backbones as released with GroundingDINO
SWIN = {"swin-t": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224),
        "swin-b": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12, 384)}


def grounding_dino_config(backbone: str = "swin-b"):
    """GroundingDinoConfig of IDEA-Research/grounding-dino-tiny (`swin-t`) or grounding-dino-base (`swin-b`)."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    if backbone not in SWIN:
        raise ValueError(f"backbone must be one of {sorted(SWIN)}, got {backbone!r}")
    embed_dim, depths, heads, window, image_size = SWIN[backbone]
    swin = SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window, image_size=image_size,
                      patch_size=4, mlp_ratio=4.0, out_indices=[2, 3, 4])
    bert = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512)  # bert-base-uncased
    return GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=256, num_queries=900,
                               encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
                               encoder_attention_heads=8, decoder_attention_heads=8, num_feature_levels=4,
                               encoder_n_points=4, decoder_n_points=4, max_text_len=256, two_stage=True)


def sam_vit_h_config():
    """SamConfig of facebook/sam-vit-huge: ViT-H/16 image encoder at 1024 px, the shared prompt encoder and decoder."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120,
                             global_attn_indexes=[7, 15, 23, 31], output_channels=256, image_size=1024,
                             patch_size=16, window_size=14, num_pos_feats=128)
    return SamConfig(vision_config=vision,
                     prompt_encoder_config=SamPromptEncoderConfig(hidden_size=256, image_size=1024, patch_size=16,
                                                                  mask_input_channels=16),
                     mask_decoder_config=SamMaskDecoderConfig(hidden_size=256, num_hidden_layers=2,
                                                              num_attention_heads=8, mlp_dim=2048,
                                                              iou_head_hidden_dim=256))


class RandomGrounding(TransformersGrounding):
    """The transformers backend over the full-size random-weight models, built on the device at the first `load`
    (so composing and instantiating the config costs nothing; the build counts in the segment stage's seconds)."""

    def __init__(self, words: list[str] | None = None, prompts: str | None = None, backbone: str = "swin-b",
                 seed: int = 0, boxes_per_word: int = 2, **kwargs) -> None:
        """words, plus the words of the prompt set at `prompts`: the BERT vocabulary (others tokenise to [UNK]).
        backbone: "swin-b" (grounding-dino-base) or "swin-t" (-tiny). boxes_per_word: detections passed to SAM
        per word (random scores would pass any number of the 900 queries; a trained detector passes a few).
        kwargs are TransformersGrounding's (device, dtypes, sam_box_chunk)."""
        if boxes_per_word < 1:
            raise ValueError("segmenter.backend.boxes_per_word must be >= 1")
        grounding_dino_config(backbone)  # one-line ValueError for an unknown backbone, before anything runs
        super().__init__(detector=f"random GroundingDINO {backbone}", sam="random SAM ViT-H", **kwargs)
        from_prompts = [w for row in load_prompt_set(prompts) for w in row.words] if prompts else []
        self.vocabulary = list(words or []) + from_prompts
        self.backbone, self.seed, self.boxes_per_word = backbone, int(seed), int(boxes_per_word)
        self.name = f"grounded_sam_random_{backbone.replace('-', '')}"

    def detect(self, images: list[PIL.Image.Image], phrases: list[str]) -> list[Detections]:
        """The real detector's forward; then the `boxes_per_word` best queries get score 1 (pass any threshold),
        the others 0."""
        dets = super().detect(images, phrases)
        for det in dets:
            keep = np.zeros(len(det.box_scores), dtype=bool)
            keep[np.argsort(-det.box_scores, kind="stable")[: self.boxes_per_word]] = True
            det.box_scores = keep.astype(det.box_scores.dtype)
            det.text_scores = keep.astype(det.text_scores.dtype)
        return dets

    def check_available(self) -> None:
        """Nothing to download."""

    def load(self) -> None:
        """Build both models on the device (seeded) and the released-size processors (idempotent)."""
        if self.loaded:
            return
        import torch
        import transformers
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor, SamModel, SamProcessor

        with self.torch_device:  # parameters are allocated and initialised on the target device
            torch.manual_seed(self.seed)
            detector = GroundingDinoForObjectDetection(grounding_dino_config(self.backbone)).eval()
            torch.manual_seed(self.seed + 1)
            sam = SamModel(sam_vit_h_config()).eval()
        side = sam.config.vision_config.image_size  # 1024: SAM's input, longer side resized to it and padded
        # transformers 5 names the torchvision-free processors ...Pil; 4.x has only the plain ones
        det_images = getattr(transformers, "GroundingDinoImageProcessorPil", transformers.GroundingDinoImageProcessor)
        sam_images = getattr(transformers, "SamImageProcessorPil", transformers.SamImageProcessor)
        self._install(detector,
                      GroundingDinoProcessor(det_images(size={"shortest_edge": 800, "longest_edge": 1333}),
                                             word_tokenizer(self.vocabulary)),
                      sam, SamProcessor(sam_images(size={"longest_edge": side},
                                                   pad_size={"height": side, "width": side})))


def random_grounded_sam(backend: RandomGrounding, **kwargs) -> GroundedSam:
    """The recipe over `RandomGrounding`; kwargs are GroundedSam's. Its masks mean nothing (tables say so)."""
    segmenter = GroundedSam(backend, **kwargs)
    segmenter.meaningful = False
    return segmenter
