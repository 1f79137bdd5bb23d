"""The world's tokenizer, processor and tiny VLM, built in code as ordinary Hugging Face objects.

The model is a real `LlavaForConditionalGeneration` (CLIP vision tower + Llama decoder), so every code
path that runs on it runs on real LLaVA checkpoints too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from vlalign.world.text import vocabulary

BACKGROUND_MEAN, BACKGROUND_STD = 0.93, 0.25
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
# LLaVA-1.5's conversation format, without the system prompt. No space before "<image>": the word-level
# tokenizer would turn it into an unknown "▁" piece.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyVLMConfig:
    """Sizes of a world VLM.

    A 16-pixel patch covers one cell of the 3x3 scene grid, so the decoder reads nine image tokens, one
    per place an object can be. `init_range` is larger than transformers' 0.02 because at these widths
    the default leaves attention uniform for hundreds of steps before the decoder starts to read the
    image.
    """

    image_size: int = 48
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    max_positions: int = 256
    init_range: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's vocabulary, saved and loaded like any HF tokenizer."""
    words = ["USER", "ASSISTANT", *vocabulary()]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        piece = w if not w[0].isalnum() else "▁" + w
        vocab.setdefault(piece, len(vocab))
        vocab.setdefault(w, len(vocab))  # the same word after punctuation, e.g. "?" then "yes"
    vocab.setdefault("▁", len(vocab))  # a space before punctuation, e.g. "( the star is missing )"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=512,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def build_processor(config: TinyVLMConfig = TinyVLMConfig()) -> LlavaProcessor:
    # Normalised around the world's light backgrounds, so empty space is near zero and objects stand out.
    image_processor = CLIPImageProcessorPil(
        image_mean=[BACKGROUND_MEAN] * 3, image_std=[BACKGROUND_STD] * 3,
        size={"shortest_edge": config.image_size},
        crop_size={"height": config.image_size, "width": config.image_size},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(processor: LlavaProcessor, config: TinyVLMConfig = TinyVLMConfig(),
                seed: int = 0) -> LlavaForConditionalGeneration:
    """A freshly initialised tiny LLaVA whose vocabulary matches `processor`."""
    import torch

    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden, intermediate_size=config.vision_hidden * 2,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
        image_size=config.image_size, patch_size=config.patch_size, projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=config.text_hidden, intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_heads, max_position_embeddings=config.max_positions,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True, initializer_range=config.init_range,
    )
    llava = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=processor.image_token_id,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        projector_hidden_act="gelu", tie_word_embeddings=True, initializer_range=config.init_range,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model
