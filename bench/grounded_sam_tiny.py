"""Tiny random-weight GroundingDINO and SAM (transformers), built offline: `segmenter=grounded_sam_tiny`.

The real Grounded-SAM code path (`bench.grounded_sam.GroundedSam`: processors, one query per word,
thresholds, SAM decoding, union, exclusions) on models small enough for CPU tests and `make smoke`. The
weights are random, so the masks mean nothing: the segmenter says so (`meaningful = False`) and every
table built on it is labelled a pipeline check.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.grounded_sam import GroundedSam

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."]  # "." is GroundingDINO's phrase separator


def tiny_detector(words: list[str], seed: int = 0, num_queries: int = 12):
    """(GroundingDinoForObjectDetection, GroundingDinoProcessor) with random weights; the BERT vocabulary is
    the special tokens plus `words` (other words tokenise to [UNK]). Nothing is downloaded."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = SPECIAL_TOKENS + sorted({t for w in words for t in w.lower().split()} - set(SPECIAL_TOKENS))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(path))  # reads the file now
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=2, out_indices=[3, 4])
    text = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, num_queries=num_queries,
                                 encoder_layers=1, decoder_layers=2, d_model=32, encoder_ffn_dim=32,
                                 decoder_ffn_dim=32, encoder_attention_heads=2, decoder_attention_heads=2,
                                 num_feature_levels=2, encoder_n_points=1, decoder_n_points=1,
                                 max_text_len=32)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    return model, GroundingDinoProcessor(image_processor, tokenizer)


def tiny_sam(seed: int = 0):
    """(SamModel, SamProcessor) with random weights at 64 px.

    The vision num_pos_feats must be half the prompt encoder hidden size (= vision output_channels),
    not half the vision hidden_size: the box embedding adds 2 * num_pos_feats features to point embeddings."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessorPil,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    config = SamConfig(
        vision_config=SamVisionConfig(hidden_size=16, output_channels=8, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=64, patch_size=8, mlp_dim=32,
                                      global_attn_indexes=[0], num_pos_feats=4, window_size=2),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=8, image_size=64, patch_size=8,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                 mlp_dim=16, iou_head_hidden_dim=16),
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    image_processor = SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    return model, SamProcessor(image_processor)


def tiny_grounded_sam(words: list[str], seed: int = 0, num_queries: int = 12, **kwargs) -> GroundedSam:
    """GroundedSam on the tiny random models; kwargs are GroundedSam's (thresholds, batch size, ...)."""
    segmenter = GroundedSam.from_models(*tiny_detector(words, seed, num_queries), *tiny_sam(seed), **kwargs)
    segmenter.name, segmenter.meaningful = "grounded_sam_tiny", False
    return segmenter
