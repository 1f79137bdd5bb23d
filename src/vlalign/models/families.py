"""The VLM families vlalign is tested on, and the README's table of what each shares.

Every family here has a tiny random-weight model of its real architecture in the tests (`tests/tiny_archs.py`,
a test keeps the two lists equal), on which the shared-prefix rows are checked equal to plain rows in float32,
float64 and bf16 and under gradient checkpointing, and seeded samples from one prefill equal one prefill per
sample. `python -m vlalign.models.families` prints the table; a test keeps the README's copy equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlalign.models.lora import projections
from vlalign.models.prefix import BIDIRECTIONAL_IMAGES, SHARED_FAMILIES


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' name for the architecture (config.json's model_type)
    name: str  # the checkpoints it covers
    positions: str  # how the decoder places tokens, which shared-prefix rows reproduce
    notes: str = ""  # what else the shared rows have to respect
    sliding: bool = False  # some layers slide: sampling keeps transformers' dynamic cache (`models/generate.py`)


FAMILIES = (
    Family("llava", "LLaVA-1.5", "1-D"),
    Family("llava_next", "LLaVA-NeXT", "1-D", "anyres tiles"),
    Family("llava_onevision", "LLaVA-OneVision", "1-D", "anyres tiles"),
    Family("llava_onevision1_5", "LLaVA-OneVision-1.5", "1-D", "RICE-ViT, Qwen3 decoder"),
    Family("qwen2_vl", "Qwen2-VL", "3-D M-RoPE (`get_rope_index`)"),
    Family("qwen2_5_vl", "Qwen2.5-VL", "3-D M-RoPE (`get_rope_index`)", "windowed ViT"),
    Family("qwen3_vl", "Qwen3-VL (dense)", "interleaved 3-D M-RoPE (`get_rope_index`)",
           "DeepStack: vision features added at the image tokens of early decoder layers"),
    Family("qwen3_vl_moe", "Qwen3-VL MoE (30B-A3B, 235B-A22B)", "interleaved 3-D M-RoPE (`get_rope_index`)",
           "DeepStack; routed experts, the routers' load-balancing term weighted by `train.router_aux_loss_coef`"),
    Family("internvl", "InternVL3 / InternVL3.5", "1-D", "dynamic tiles and a thumbnail, pixel shuffle"),
    Family("idefics3", "Idefics3", "1-D", "pixel shuffle"),
    Family("smolvlm", "SmolVLM", "1-D", "image splitting, pixel shuffle"),
    Family("gemma3", "Gemma 3", "1-D", "sliding-window layers; image tokens read their image both ways", sliding=True),
    Family("gemma4", "Gemma 4", "1-D",
           "sliding and global layers, shared key/value layers, per-layer embeddings; image tokens read their "
           "image both ways in the sliding layers (`use_bidirectional_attention: vision`); text read both ways "
           "(`all`) falls back to one row per text", sliding=True),
    Family("glm4v", "GLM-4.1V", "3-D RoPE on part of each head (`get_rope_index`)"),
    Family("glm46v", "GLM-4.6V", "3-D RoPE on part of each head (`get_rope_index`)"),
)


def markdown_table() -> str:
    """The README's family table."""
    rows = ["| family | `model_type` | positions | shared prompt rows (pairs, labeler, groups) | sampling prefill "
            "| bf16 tested | LoRA targets (default) | what the shared rows respect |",
            "|---|---|---|---|---|---|---|---|"]
    for f in FAMILIES:
        shared = "yes" if f.model_type in SHARED_FAMILIES else "no: one row per text"
        prefill = "yes, dynamic cache" if f.sliding else "yes, static cache"
        both_ways = " (bidirectional image blocks)" if f.model_type in BIDIRECTIONAL_IMAGES else ""
        targets = ", ".join(f"`{p}`" for p in projections(f.model_type))
        rows.append(f"| {f.name} | `{f.model_type}` | {f.positions} | {shared}{both_ways} | {prefill} | yes "
                    f"| {targets} | {f.notes} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
