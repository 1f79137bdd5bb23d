"""Do the real-size code paths run on a GPU? A LLaVA-1.5-7B-shaped model (CLIP ViT-L/14 at 336 px, so 576
image tokens; a Llama-7B decoder with a 32k vocabulary; random bf16 weights built in code, nothing
downloaded) goes through every step the methods use, and each step's time and peak memory are printed.

    python bench/cuda_real_size.py                    # needs a CUDA GPU with ~40 GB free
    python bench/cuda_real_size.py --device cpu --tiny  # a dry run of the script itself on a CPU

(The throughput of the same shape against TRL: `bench/dpo_throughput.py --shape llava7b --real-size --device
cuda`, and the labeler and sampling benchmarks with the same options.)

Steps: seeded deconfounded sampling, P(yes) from one forward pass, two LoRA DPO steps (reference = the
adapter-disabled base), two POVID stage-2 steps (diffusion-noised images), best-of-N by the implicit reward.
The prompts are the world's, rendered at 336 px; the answers of random weights are noise, which is fine:
this measures that the code runs at size on CUDA, not what the model says.
"""

from __future__ import annotations

import argparse
import time

import torch


def step(name: str, fn):
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    out = fn()
    peak = 0.0
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"{name:<34} {time.time() - start:7.2f} s   peak {peak:6.1f} GiB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (32 = Llama-7B)")
    ap.add_argument("--tiny", action="store_true", help="narrow widths: a dry run of the script itself")
    ap.add_argument("--device", default=None, help="cuda (the default) or cpu (the default with --tiny)")
    args = ap.parse_args()
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU (or --device cpu --tiny for a dry run)")
    width = 64 if args.tiny else 1
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from vlalign.models.best_of_n import best_of_n
    from vlalign.models.generate import generate, sample_seed
    from vlalign.models.scoring import yes_probability
    from vlalign.models.settings import Decoding, LoraSettings
    from vlalign.train.examples import PreferenceExample
    from vlalign.train.fit import fit
    from vlalign.train.objectives import POVIDNoise
    from vlalign.train.settings import NoiseConfig, OptimConfig, TrainConfig
    from vlalign.world.model import TinyVLMConfig, build_processor
    from vlalign.world.render import render
    from vlalign.world.scene import scenes
    from vlalign.world.text import describe

    print(torch.cuda.get_device_name() if device.startswith("cuda") else "cpu (dry run)", torch.__version__, flush=True)
    processor = build_processor(TinyVLMConfig(image_size=336, patch_size=14))
    tok = processor.tokenizer
    tok.model_max_length = 4096
    vision = CLIPVisionConfig(hidden_size=1024 // width, intermediate_size=4096 // width,
                              num_hidden_layers=24 if not args.tiny else 2, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096 // width, intermediate_size=11008 // width,
                       num_hidden_layers=args.layers if not args.tiny else 1,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=processor.image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)

    def build():
        with torch.device(device):
            model = LlavaForConditionalGeneration._from_config(
                config, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        return model.eval()

    model = step("build LLaVA-1.5-7B shape (bf16)", build)
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B", flush=True)
    held = list(scenes("test", 4))
    images = [render(s, 336) for s in held]
    import numpy as np

    truths = [describe(s, np.random.default_rng(s.seed)) for s in held]
    prompts = ["describe the image in detail."] * len(images)
    enc = processor(images=images[:1], text=["USER:<image> hi ASSISTANT:"], return_tensors="pt")
    print(f"prompt tokens with one image: {enc['input_ids'].shape[1]} (576 image tokens)", flush=True)

    seeds = [sample_seed(0, f"p{i}", k) for i in range(4) for k in range(2)]
    step("sample 4 prompts x 2 seeds, 32 tok", lambda: generate(
        model, processor, [im for im in images for _ in range(2)], [p for p in prompts for _ in range(2)],
        Decoding(max_new_tokens=32, temperature=0.7), seeds=seeds, batch_size=8))
    step("P(yes) of 16 questions, 1 pass", lambda: yes_probability(
        model, processor, images * 4, ["is there a red circle in the image?"] * 16, batch_size=16))
    examples = [PreferenceExample(f"e{i}", images[i], prompts[i], truths[i], truths[(i + 1) % 4]) for i in range(4)]
    lora = TrainConfig(batch_size=2, epochs=1, lora=LoraSettings(r=16, alpha=32),
                       optim=OptimConfig(lr=1e-5, warmup_ratio=0.0, log_every=1))
    model, history = step("LoRA DPO, 2 steps of 2 pairs", lambda: fit(model, processor, examples, lora))
    print(f"  DPO losses: {[round(h['loss'], 4) for h in history]}", flush=True)
    model = model.merge_and_unload()
    model, history = step("POVID stage 2 (LoRA), 2 steps", lambda: fit(
        model, processor, examples, lora, POVIDNoise(NoiseConfig(step=500))))
    print(f"  POVID losses: {[round(h['loss'], 4) for h in history]}, noisy term "
          f"{[round(h['noisy_loss'], 4) for h in history]}", flush=True)
    ranked = step("best-of-2 by implicit reward (LoRA)", lambda: best_of_n(
        model, model, processor, images[:2], prompts[:2], n=2, decoding=Decoding(max_new_tokens=16, temperature=0.7)))
    print(f"  rewards: {[[round(r, 4) for _, r in x.candidates] for x in ranked]}", flush=True)


if __name__ == "__main__":
    main()
