"""Tiny random-weight GroundingDINO and SAM (transformers), processors built offline: segmenter tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

# special tokens first, then the words the tests use; "." is GroundingDINO's phrase separator
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "cat", "cats", "dog", "teddy", "bear", "red",
         "square", "tree", "sky"]


def tiny_detector(vocab_dir: Path, seed: int = 0, num_queries: int = 12):
    """(GroundingDinoForObjectDetection, GroundingDinoProcessor) with random weights; nothing downloaded."""
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

    vocab = Path(vocab_dir) / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=2, out_indices=[3, 4])
    text = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
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
    """(SamModel, SamProcessor) with random weights.

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


def small_images() -> list[PIL.Image.Image]:
    """Three small RGB images of different sizes (one of them blank)."""
    rng = np.random.default_rng(0)
    a = np.zeros((40, 56, 3), np.uint8)
    a[10:30, 12:40] = (220, 30, 30)
    b = rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)
    c = np.full((36, 36, 3), 255, np.uint8)
    return [PIL.Image.fromarray(x) for x in (a, b, c)]
