"""Tiny random-weight VLMs of real architectures, built entirely in code (no hub downloads).

Each builder returns `(model, processor)`: a real transformers model class with a few hundred thousand
parameters and the architecture's own processor class around a word-level tokenizer that carries the
architecture's special tokens and chat format. They exist to prove that the model layer (batching,
scoring, generation, LoRA, saving and loading, DPO) is not tied to the world's LLaVA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Words the tests' instructions and responses use; anything else becomes <unk>.
WORDS = (
    "describe", "the", "image", "is", "there", "a", "an", "red", "green", "blue", "yellow", "circle", "square",
    "triangle", "star", "and", "of", "in", "on", "left", "right", "top", "bottom", "what", "color", "shape",
    "yes", "Yes", "no", "No", "it", "this", "picture", "shows", "system", "user", "assistant", "You", "are",
    "helpful", "User", "Assistant", "model",
)
# Wider than transformers' 0.02, so a random model's next-token distribution is far from uniform and
# padding or masking mistakes show up in the scores.
INIT_RANGE = 0.2
PUNCT = (".", ",", "?", "!", ":", "'")

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>"
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# LLaVA-1.5's conversation format (LLaVA-NeXT's Vicuna checkpoints use it too)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

GEMMA3_CHAT_TEMPLATE = (
    "<bos>{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else "
    "message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def word_tokenizer(special: Sequence[str], bos: str, eos: str, pad: str, unk: str,
                   extra_special: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS whose `special` tokens (and "\\n") are single added tokens."""
    vocab: dict[str, int] = {}
    for t in special:
        vocab.setdefault(t, len(vocab))
    for w in WORDS + PUNCT:
        vocab.setdefault("▁" + w, len(vocab))
        vocab.setdefault(w, len(vocab))  # after punctuation or a special token
    vocab.setdefault("▁", len(vocab))
    vocab.setdefault("\n", len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_tokens([AddedToken("\n", normalized=False, special=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        extra_special_tokens=extra_special or {}, model_max_length=1024,
    )
    named = {bos, eos, unk, pad}
    fast.add_special_tokens({"additional_special_tokens": [t for t in special if t not in named]})
    return fast


def _finish(model, tok):
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model.eval()


# ---- (a) LLaVA: CLIP vision tower + Llama decoder (the world's builder at tiny sizes) ----

def build_llava(seed: int = 0):
    from vlalign.world.model import TinyVLMConfig, build_model, build_processor

    config = TinyVLMConfig(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, vision_heads=2,
                           text_hidden=32, text_layers=1, text_heads=2, text_intermediate=64)
    processor = build_processor(config)
    return build_model(processor, config, seed=seed).eval(), processor


# ---- (b) Qwen2-VL: windowless ViT with 2x2 patch merger + Qwen2 decoder with M-RoPE ----

QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>", "<unk>")


# Images are resized to multiples of 16 px with 256 to 2304 pixels (16x16 to 48x48): 8-px patches, merged
# 2x2, so an image becomes 1 to 9 tokens depending on its size, as in the real models.
QWEN_PATCH, QWEN_MERGE = 8, 2


def _qwen_tokenizer_and_images():
    """The tokenizer and image processor Qwen2-VL and Qwen2.5-VL share."""
    from transformers import Qwen2VLImageProcessorPil

    tok = word_tokenizer(QWEN_SPECIAL, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", unk="<unk>",
                         extra_special={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                        "vision_bos_token": "<|vision_start|>",
                                        "vision_eos_token": "<|vision_end|>"})
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 16 * 16, "longest_edge": 48 * 48},
        patch_size=QWEN_PATCH, temporal_patch_size=2, merge_size=QWEN_MERGE,
    )
    return tok, image_processor


def _qwen_decoder(tok) -> dict:
    """The config fields of the Qwen2 decoder with M-RoPE and the vision token ids, shared by both families."""
    return dict(
        text_config=dict(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            initializer_range=INIT_RANGE,
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )


def build_qwen2_vl(seed: int = 0):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from vlalign.models.processors import make_processor

    tok, image_processor = _qwen_tokenizer_and_images()
    # The real processor class; without torchvision its video half is left out (vlalign.models.processors).
    processor = make_processor(Qwen2VLProcessor, image_processor=image_processor, tokenizer=tok,
                               chat_template=QWEN_CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                           patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2,
                           initializer_range=INIT_RANGE),
        **_qwen_decoder(tok),
    )
    torch.manual_seed(seed)
    return _finish(Qwen2VLForConditionalGeneration(config), tok), processor


# ---- (c) Idefics3 (SmolVLM's architecture): SigLIP-style encoder, pixel-shuffle connector, Llama ----

IDEFICS3_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<unk>", "<fake_token_around_image>",
                    "<image>", "<global-img>", "<end_of_utterance>")


def build_idefics3(seed: int = 0):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tok = word_tokenizer(IDEFICS3_SPECIAL, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<pad>",
                         unk="<unk>")
    side, patch, scale = 32, 8, 2  # 4x4 patches, pixel-shuffled by 2 -> 4 image tokens
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": side}, max_image_size={"longest_edge": side}, do_image_splitting=False,
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok,
                                  image_seq_len=(side // patch) ** 2 // scale**2,
                                  chat_template=IDEFICS3_CHAT_TEMPLATE)
    config = Idefics3Config(
        text_config=dict(
            model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            initializer_range=INIT_RANGE,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=side, patch_size=patch, initializer_range=INIT_RANGE),
        scale_factor=scale, image_token_id=processor.image_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return _finish(Idefics3ForConditionalGeneration(config), tok), processor


def _llama(tok, **kw) -> dict:
    """A one-layer Llama decoder's config over `tok`'s vocabulary."""
    return dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                initializer_range=INIT_RANGE, **kw)


# ---- (d) LLaVA-NeXT: CLIP over anyres tiles (the grid depends on `image_sizes`) + Llama decoder ----

LLAVA_SPECIAL = ("<s>", "</s>", "<pad>", "<unk>", "<image>")


def build_llava_next(seed: int = 0):
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = word_tokenizer(LLAVA_SPECIAL, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>",
                         extra_special={"image_token": "<image>"})
    side, patch = 32, 16  # a 32-px tile is 2x2 patches; images pick a grid of tiles by their aspect ratio
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_CHAT_TEMPLATE)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=side, patch_size=patch, projection_dim=32,
                           initializer_range=INIT_RANGE),
        text_config=_llama(tok), image_token_index=processor.image_token_id, image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_seq_length=4,
    )
    torch.manual_seed(seed)
    return _finish(LlavaNextForConditionalGeneration(config), tok), processor


# ---- (e) Qwen2.5-VL: windowed ViT with 2x2 merger + Qwen2 decoder with M-RoPE ----

def build_qwen2_5_vl(seed: int = 0):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from vlalign.models.processors import make_processor

    tok, image_processor = _qwen_tokenizer_and_images()
    processor = make_processor(Qwen2_5_VLProcessor, image_processor=image_processor, tokenizer=tok,
                               chat_template=QWEN_CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2,
                           window_size=16, fullatt_block_indexes=[1], initializer_range=INIT_RANGE),
        **_qwen_decoder(tok),
    )
    torch.manual_seed(seed)
    return _finish(Qwen2_5_VLForConditionalGeneration(config), tok), processor


# ---- (f) SmolVLM: Idefics3's design with image splitting (a grid of tiles plus a global image) ----

def build_smolvlm(seed: int = 0):
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
    )

    from vlalign.models.processors import make_processor

    tiles = tuple(f"<row_{r}_col_{c}>" for r in (1, 2) for c in (1, 2))  # where each tile sits in the grid
    tok = word_tokenizer(IDEFICS3_SPECIAL + tiles, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<pad>",
                         unk="<unk>")
    side, patch, scale = 16, 8, 2  # 2x2 patches, pixel-shuffled by 2 -> 1 token per tile
    image_processor = SmolVLMImageProcessorPil(size={"longest_edge": 2 * side}, max_image_size={"longest_edge": side},
                                               do_image_splitting=True)
    processor = make_processor(SmolVLMProcessor, image_processor=image_processor, tokenizer=tok,
                               image_seq_len=(side // patch) ** 2 // scale**2, chat_template=IDEFICS3_CHAT_TEMPLATE)
    config = SmolVLMConfig(
        text_config=_llama(tok),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=side, patch_size=patch, initializer_range=INIT_RANGE),
        scale_factor=scale, image_token_id=processor.image_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return _finish(SmolVLMForConditionalGeneration(config), tok), processor


# ---- (g) Gemma 3: SigLIP, pooled soft tokens attended bidirectionally (token_type_ids), sliding-window layers ----

GEMMA3_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                  "<end_of_image>", "<image_soft_token>")


def build_gemma3(seed: int = 0, sliding_window: int = 8):
    """`sliding_window` is tiny so that the local layer's window cuts through the prompts of the tests."""
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    tok = word_tokenizer(GEMMA3_SPECIAL, bos="<bos>", eos="<end_of_turn>", pad="<pad>", unk="<unk>",
                         extra_special={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                        "image_token": "<image_soft_token>"})
    side, patch, tokens = 32, 8, 4  # 4x4 patches pooled 2x2 -> 4 soft tokens
    image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=tokens,
                                chat_template=GEMMA3_CHAT_TEMPLATE)
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                         sliding_window=sliding_window, layer_types=["sliding_attention", "full_attention"],
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=INIT_RANGE),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=side, patch_size=patch,
                           initializer_range=INIT_RANGE),
        mm_tokens_per_image=tokens, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"), initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers starts the projection at zero, which would blank every image
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, INIT_RANGE)
    return _finish(model, tok), processor


# ---- (h) LLaVA-OneVision: SigLIP over anyres tiles (`image_sizes`) + Qwen2 decoder ----

def build_llava_onevision(seed: int = 0):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    from vlalign.models.processors import make_processor

    tok = word_tokenizer(("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<unk>"),
                         bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", unk="<unk>",
                         extra_special={"image_token": "<image>", "video_token": "<video>"})
    side, patch = 16, 8  # a 16-px tile is 2x2 patches
    pinpoints = [[16, 16], [16, 32], [32, 16], [32, 32]]
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": side, "width": side},
                                                      image_grid_pinpoints=pinpoints)
    processor = make_processor(LlavaOnevisionProcessor, image_processor=image_processor, tokenizer=tok,
                               num_image_tokens=(side // patch) ** 2, vision_feature_select_strategy="full",
                               chat_template=QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>",
                                                                        "<image>"))
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=side, patch_size=patch,
                           initializer_range=INIT_RANGE),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=INIT_RANGE),
        image_token_index=processor.image_token_id, video_token_index=processor.video_token_id,
        image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    return _finish(LlavaOnevisionForConditionalGeneration(config), tok), processor


# ---- (i) Qwen3-VL: ViT with DeepStack mergers (features of early vision blocks added to early decoder layers) +
# Qwen3 decoder with interleaved M-RoPE; the MoE variant swaps the MLPs for routed experts ----

def _qwen3_vl_config(tok, text: dict) -> dict:
    """Two vision blocks, each feeding a DeepStack merger (into decoder layers 0 and 1), and a two-layer Qwen3
    decoder whose 16-dim heads rotate by interleaved M-RoPE (T, H, W sections of 2, 3, 3 frequencies)."""
    return dict(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2,
                           num_position_embeddings=16, deepstack_visual_indexes=[0, 1],
                           initializer_range=INIT_RANGE),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True},
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         initializer_range=INIT_RANGE, **text),
        **{k: v for k, v in _qwen_decoder(tok).items() if k != "text_config"},
    )


def build_qwen3_vl(seed: int = 0):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    from vlalign.models.processors import make_processor

    tok, image_processor = _qwen_tokenizer_and_images()
    processor = make_processor(Qwen3VLProcessor, image_processor=image_processor, tokenizer=tok,
                               chat_template=QWEN_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    return _finish(Qwen3VLForConditionalGeneration(Qwen3VLConfig(**_qwen3_vl_config(tok, {}))), tok), processor


def build_qwen3_vl_moe(seed: int = 0):
    """Qwen3-VL-30B-A3B's design: every decoder MLP a router over 4 experts, 2 active per token."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor

    from vlalign.models.processors import make_processor

    tok, image_processor = _qwen_tokenizer_and_images()
    processor = make_processor(Qwen3VLProcessor, image_processor=image_processor, tokenizer=tok,
                               chat_template=QWEN_CHAT_TEMPLATE)
    moe = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
               router_aux_loss_coef=0.01)
    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig(**_qwen3_vl_config(tok, moe)))
    with torch.no_grad():  # transformers starts the routers at zero (uniform routing); a trained one is not
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0, INIT_RANGE)
    return _finish(model, tok), processor


# ---- (j) InternVL3.5: InternViT over dynamic tiles (a grid by aspect ratio plus a thumbnail), pixel shuffle,
# MLP projector, Qwen3 decoder ----

INTERNVL_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
                    "<unk>")


def build_internvl(seed: int = 0):
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )

    from vlalign.models.processors import make_processor

    tok = word_tokenizer(INTERNVL_SPECIAL, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", unk="<unk>",
                         extra_special={"start_image_token": "<img>", "end_image_token": "</img>",
                                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    side, patch = 16, 4  # a 16-px tile is 4x4 patches, pixel-shuffled by 0.5 -> 4 tokens per tile
    image_processor = GotOcr2ImageProcessorPil(size={"height": side, "width": side}, crop_to_patches=True,
                                               min_patches=1, max_patches=4)
    tokens = (side // patch) ** 2 // 4
    processor = make_processor(InternVLProcessor, image_processor=image_processor, tokenizer=tok,
                               image_seq_length=tokens,
                               chat_template=QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>",
                                                                        "<IMG_CONTEXT>\n"))
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=side, patch_size=patch, initializer_range=INIT_RANGE),
        text_config=dict(model_type="qwen3", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=INIT_RANGE),
        image_token_id=processor.image_token_id, image_seq_length=tokens, downsample_ratio=0.5,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return _finish(InternVLForConditionalGeneration(config), tok), processor


# ---- (k) Gemma 4: a ViT over a variable patch budget (aspect ratio kept), pooled soft tokens; a decoder of
# sliding and global layers whose sliding layers read an image both ways, with per-layer token embeddings ----

GEMMA4_SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<|image>", "<image|>",
                  "<|image|>", "<|audio>", "<audio|>", "<|audio|>")


def build_gemma4(seed: int = 0, sliding_window: int = 8, bidirectional: str | None = "vision"):
    """`sliding_window` is tiny so that the sliding layers' window cuts through the tests' prompts; with
    `bidirectional="vision"` image tokens read each other both ways in them ("all": the text too). Five layers
    (sliding, global, sliding, global, and a last global one reading the second's keys and values), so that
    what a global layer lets an image token read reaches the answers through the next sliding layer."""
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessorPil,
        Gemma4Processor,
    )

    from vlalign.models.processors import make_processor

    tok = word_tokenizer(GEMMA4_SPECIAL, bos="<bos>", eos="<end_of_turn>", pad="<pad>", unk="<unk>",
                         extra_special={"boi_token": "<|image>", "eoi_token": "<image|>", "image_token": "<|image|>",
                                        "boa_token": "<|audio>", "eoa_token": "<audio|>", "audio_token": "<|audio|>"})
    patch, pool = 4, 2  # 4-px patches pooled 2x2: a 40x48 image becomes 63 soft tokens (at most 70)
    image_processor = Gemma4ImageProcessorPil(patch_size=patch, pooling_kernel_size=pool, max_soft_tokens=70)
    processor = make_processor(Gemma4Processor, feature_extractor=Gemma4AudioFeatureExtractor(),
                               image_processor=image_processor, tokenizer=tok, image_seq_length=70,
                               chat_template=GEMMA3_CHAT_TEMPLATE.replace("<start_of_image>", "<|image|>"))
    ids = tok.convert_tokens_to_ids
    config = Gemma4Config(
        text_config=dict(vocab_size=len(tok), vocab_size_per_layer_input=len(tok), hidden_size=32,
                         hidden_size_per_layer_input=8, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16,
                         sliding_window=sliding_window, use_bidirectional_attention=bidirectional,
                         layer_types=["sliding_attention", "full_attention"] * 2 + ["full_attention"],
                         num_kv_shared_layers=1,
                         attention_k_eq_v=True,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=INIT_RANGE),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=2, head_dim=16, patch_size=patch, pooling_kernel_size=pool,
                           position_embedding_size=64, initializer_range=INIT_RANGE),
        audio_config=None, boi_token_id=ids("<|image>"), eoi_token_id=ids("<image|>"), image_token_id=ids("<|image|>"),
        video_token_id=processor.video_token_id,  # the processor adds its video token to the tokenizer
        boa_token_id=ids("<|audio>"), eoa_token_index=ids("<audio|>"), audio_token_id=ids("<|audio|>"),
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    return _finish(Gemma4ForConditionalGeneration(config), tok), processor


# ---- (l) GLM-4.1V / GLM-4.6V: a ViT with 2-D RoPE and 2x2 merger + GLM-4 decoder with 3-D RoPE on part of
# each head ----

GLM_SPECIAL = ("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|begin_of_image|>",
               "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>", "<unk>")
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _build_glm(processor_cls, config_cls, model_cls, seed: int):
    from transformers import Glm4vImageProcessorPil

    from vlalign.models.processors import make_processor

    tok = word_tokenizer(GLM_SPECIAL, bos="[gMASK]", eos="<|user|>", pad="<|endoftext|>", unk="<unk>",
                         extra_special={"image_token": "<|image|>", "video_token": "<|video|>"})
    image_processor = Glm4vImageProcessorPil(size={"shortest_edge": 16 * 16, "longest_edge": 48 * 48},
                                             patch_size=QWEN_PATCH, temporal_patch_size=2, merge_size=QWEN_MERGE)
    processor = make_processor(processor_cls, image_processor=image_processor, tokenizer=tok,
                               chat_template=GLM_CHAT_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    config = config_cls(
        vision_config=dict(model_type="glm4v_vision", depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=32, image_size=16, patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE,
                           temporal_patch_size=2, initializer_range=INIT_RANGE),
        text_config=dict(model_type="glm4v_text", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "partial_rotary_factor": 0.5},
                         pad_token_id=tok.pad_token_id, initializer_range=INIT_RANGE),
        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"), image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"), video_end_token_id=ids("<|end_of_video|>"),
    )
    torch.manual_seed(seed)
    return _finish(model_cls(config), tok), processor


def build_glm4v(seed: int = 0):
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vProcessor

    return _build_glm(Glm4vProcessor, Glm4vConfig, Glm4vForConditionalGeneration, seed)


def build_glm46v(seed: int = 0):
    from transformers import Glm46VConfig, Glm46VForConditionalGeneration, Glm46VProcessor

    return _build_glm(Glm46VProcessor, Glm46VConfig, Glm46VForConditionalGeneration, seed)


# ---- (m) LLaVA-OneVision-1.5: RICE-ViT (2-D RoPE, a class token per image) with 2x2 merger + Qwen3 decoder,
# 1-D positions ----

def build_llava_onevision1_5(seed: int = 0):
    from transformers import (
        Exaone4_5_Processor,
        LlavaOnevision15Config,
        LlavaOnevision15ForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from vlalign.models.processors import make_processor

    tok, _ = _qwen_tokenizer_and_images()
    # RICE-ViT embeds single frames: patches of one frame (temporal patch 1)
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 16 * 16, "longest_edge": 48 * 48},
                                               patch_size=QWEN_PATCH, temporal_patch_size=1, merge_size=QWEN_MERGE)
    # the processor class transformers maps llava_onevision1_5 to (AutoProcessor's choice)
    processor = make_processor(Exaone4_5_Processor, image_processor=image_processor, tokenizer=tok,
                               chat_template=QWEN_CHAT_TEMPLATE)
    config = LlavaOnevision15Config(
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, initializer_range=INIT_RANGE),
        text_config=dict(model_type="qwen3", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=INIT_RANGE),
        **{k: v for k, v in _qwen_decoder(tok).items() if k != "text_config"},
    )
    torch.manual_seed(seed)
    return _finish(LlavaOnevision15ForConditionalGeneration(config), tok), processor


# every family the README names, each built from a config in code
ARCHS: dict[str, Callable] = {"llava": build_llava, "qwen2_vl": build_qwen2_vl, "idefics3": build_idefics3,
                              "llava_next": build_llava_next, "qwen2_5_vl": build_qwen2_5_vl, "smolvlm": build_smolvlm,
                              "gemma3": build_gemma3, "llava_onevision": build_llava_onevision,
                              "qwen3_vl": build_qwen3_vl, "qwen3_vl_moe": build_qwen3_vl_moe,
                              "internvl": build_internvl, "gemma4": build_gemma4, "glm4v": build_glm4v,
                              "glm46v": build_glm46v, "llava_onevision1_5": build_llava_onevision1_5}


def random_image(seed: int = 0, size: int = 40) -> Image.Image:
    """A small random RGB image (not square-sized to the model, so resizing runs)."""
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size + 8, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)
