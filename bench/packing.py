"""Padding-free packing against padding on a length-skewed causal-LM dataset: tokens/s and padding waste.

Both runs train the same randomly initialised tiny Llama on the same rows in the same order (AdamW,
forward + backward + step per batch). ``padded`` batches with the task's HF collator (dynamic padding
to the longest row); ``packed`` with ``PackedCollator`` (one row per batch, no pad tokens);
``packed rows`` with ``PackedCollator(max_length=--row-length)`` (rows of a fixed length, padded at
their ends). Tokens/s counts real tokens only; waste is the share of computed positions that are padding.

    python bench/packing.py [--rows 256] [--batch 16] [--hidden 128] [--layers 2] [--row-length 512]
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
import transformers

from hf_lightning.data.collators import PackedCollator, build_collator
from hf_lightning.demo.tokenizer import ensure_demo_assets

PAD = 0  # the demo tokenizer's pad id; the synthetic rows draw ids from 4 up, so never PAD


def skewed_rows(n: int, vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Mostly short rows (8-48 tokens), one in eight long (200-256): the shape of chat/instruction data."""
    rng = random.Random(seed)
    lengths = [rng.randint(200, 256) if rng.random() < 0.125 else rng.randint(8, 48) for _ in range(n)]
    return [{"input_ids": [rng.randrange(4, vocab) for _ in range(k)], "attention_mask": [1] * k} for k in lengths]


def run(model: torch.nn.Module, batches: list[dict], steps_to_skip: int = 2) -> tuple[float, float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = positions = 0
    start = None
    for i, batch in enumerate(batches):
        if i == steps_to_skip:
            start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= steps_to_skip:
            real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].ne(PAD).sum())
            tokens, positions = tokens + real, positions + batch["input_ids"].numel()
    elapsed = time.perf_counter() - start
    return tokens / elapsed, 1 - tokens / positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--row-length", type=int, default=512)
    args = parser.parse_args()
    tokenizer = transformers.AutoTokenizer.from_pretrained(ensure_demo_assets()["tokenizer"])
    rows = skewed_rows(args.rows, len(tokenizer))
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config)
    chunks = [rows[i:i + args.batch] for i in range(0, len(rows), args.batch)]
    collators = {"padded": build_collator("causal-lm", tokenizer), "packed": PackedCollator(),
                 f"packed rows ({args.row_length})": PackedCollator(args.row_length, PAD)}
    print(f"{args.rows} rows, batch {args.batch}, Llama {args.layers}x{args.hidden}, torch threads {torch.get_num_threads()}")
    print("| data | tokens/s | padding waste |\n| --- | --- | --- |")
    for name, collate in collators.items():
        batches = [collate([dict(r) for r in chunk]) for chunk in chunks]
        speed, waste = run(copy.deepcopy(base).train(), batches)
        print(f"| {name} | {speed:,.0f} | {waste:.1%} |")


if __name__ == "__main__":
    main()
