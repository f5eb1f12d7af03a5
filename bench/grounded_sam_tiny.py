"""Tiny random-weight GroundingDINO and SAM (transformers), built offline: `segmenter=grounded_sam_tiny`.

The real Grounded-SAM code path (`bench.grounded_sam.GroundedSam`: processors, one query per word,
thresholds, SAM decoding, union, exclusions) on models small enough for CPU tests and `make smoke`. The
weights are random, so the masks mean nothing: the segmenter says so (`meaningful = False`) and every
table built on it is labelled a pipeline check.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.grounded_sam import GroundedSam, TransformersGrounding

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."]  # "." is GroundingDINO's phrase separator


def word_tokenizer(words: list[str]):
    """BertTokenizer whose vocabulary is the special tokens plus the words' lower-cased parts (others: [UNK])."""
    from transformers import BertTokenizer

    vocab = SPECIAL_TOKENS + sorted({t for w in words for t in w.lower().split()} - set(SPECIAL_TOKENS))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n")
        return BertTokenizer(str(path))  # reads the file now


def tiny_detector(words: list[str], seed: int = 0, num_queries: int = 12):
    """(GroundingDinoForObjectDetection, GroundingDinoProcessor) with random weights; the BERT vocabulary is
    the special tokens plus `words` (other words tokenise to [UNK]). Nothing is downloaded."""
    import torch
    import transformers
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        SwinConfig,
    )

    tokenizer = word_tokenizer(words)
    vocab = tokenizer.vocab
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
    # transformers 5 names the torchvision-free processor ...Pil; 4.x (.venv-gsam) has only the plain one
    image_processor = getattr(transformers, "GroundingDinoImageProcessorPil", transformers.GroundingDinoImageProcessor)
    return model, GroundingDinoProcessor(image_processor(size={"shortest_edge": 64, "longest_edge": 96}), tokenizer)


def tiny_sam(seed: int = 0):
    """(SamModel, SamProcessor) with random weights at 64 px.

    The vision num_pos_feats must be half the prompt encoder hidden size (= vision output_channels),
    not half the vision hidden_size: the box embedding adds 2 * num_pos_feats features to point embeddings."""
    import torch
    import transformers
    from transformers import (
        SamConfig,
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
    image_processor = getattr(transformers, "SamImageProcessorPil", transformers.SamImageProcessor)  # as above
    return model, SamProcessor(image_processor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}))


def tiny_sam2(seed: int = 0):
    """(Sam2Model, Sam2Processor) with random weights at 64 px: a 4-stage Hiera of 8-64 channels, feature maps
    16, 8 and 4 px. SAM 2's image processor needs torchvision (present in .venv-gsam, not in .venv)."""
    import torch
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessorFast,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2Processor,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    # a global-attention block must not open a pooled stage (its window would be 0 after pooling)
    hiera = Sam2HieraDetConfig(hidden_size=8, image_size=[64, 64], blocks_per_stage=[1, 1, 1, 2],
                               embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                               window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[4],
                               window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=32)
    config = Sam2Config(vision_config=vision,
                        prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=64, patch_size=16,
                                                                      mask_input_channels=4),
                        mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=32, num_hidden_layers=1,
                                                                  num_attention_heads=2, iou_head_hidden_dim=16))
    torch.manual_seed(seed)
    return Sam2Model(config).eval(), Sam2Processor(Sam2ImageProcessorFast(size={"height": 64, "width": 64}))


def tiny_grounded_sam(words: list[str], seed: int = 0, num_queries: int = 12, device: str = "cpu",
                      **kwargs) -> GroundedSam:
    """GroundedSam over the transformers backend with the tiny random models; kwargs are GroundedSam's
    (thresholds, batch size, progress)."""
    backend = TransformersGrounding.from_models(*tiny_detector(words, seed, num_queries), *tiny_sam(seed),
                                                device=device)
    segmenter = GroundedSam(backend, **kwargs)
    segmenter.name, segmenter.meaningful = "grounded_sam_tiny", False
    return segmenter
