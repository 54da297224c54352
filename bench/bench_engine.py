"""Aggregate generation throughput of the engine against one-at-a-time model.generate().

At each concurrency level N, N client threads send seeded sampling requests to LLMHandler, each
sending its next request when the previous one is answered; the baseline serves the same
requests one at a time with transformers' generate(), seeded the same way, and the outputs are
compared. Prints a markdown table and optionally writes the numbers as JSON.

    python bench/bench_engine.py --model inference/default_model --concurrency 1,4,16
    python bench/bench_engine.py --random-qwen --device cuda --concurrency 1,16,64
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.engine import EngineConfig, GenerationRequest, LLMHandler, SamplingParams  # noqa: E402
from inference.engine.local import ModelSampling, decode_tokens, resolve_device, resolve_dtype  # noqa: E402

PROMPTS = [
    "The history of the printing press begins",
    "Write a short note to a colleague about the meeting tomorrow.",
    "Q: What is the capital of France?\nA:",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three most important things about databases are",
    "Dear customer, thank you for",
    "In summary, the results of the experiment show",
]

# Qwen2.5-0.5B's published architecture, so that GPU numbers can be taken without its weights.
QWEN25_05B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "initializer_range": 0.02,
}


@dataclass
class Row:
    concurrency: int
    engine_tokens: int
    engine_s: float
    baseline_tokens: int
    baseline_s: float
    identical: float

    @property
    def engine_tps(self) -> float:
        return self.engine_tokens / self.engine_s

    @property
    def baseline_tps(self) -> float:
        return self.baseline_tokens / self.baseline_s


def build_random_qwen(directory: Path) -> Path:
    """Qwen2.5-0.5B-shaped model with random weights, and a byte-level BPE tokenizer that covers
    its whole vocabulary (the real tokenizer is not shipped offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab_size, eos = int(QWEN25_05B_CONFIG["vocab_size"]), int(QWEN25_05B_CONFIG["eos_token_id"])
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Every byte pair, then pairs extended by one byte, until the vocabulary is full.
    merges = [(a, b) for a in alphabet for b in alphabet]
    merges += [(a + b, c) for a, b in merges for c in alphabet][
        : vocab_size - 1 - len(alphabet) - len(merges)
    ]
    tokens = alphabet + [left + right for left, right in merges]
    tokens.insert(eos, "<|endoftext|>")
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(directory)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B_CONFIG))
    model.to(torch.bfloat16)  # type: ignore[call-arg, arg-type]
    model.save_pretrained(directory)
    return directory


def run_engine(
    handler: LLMHandler, *, concurrency: int, prompts: list[str], params: list[SamplingParams]
) -> tuple[list[str], int, float]:
    """Serve the requests from `concurrency` client threads, each sending its next request as
    soon as the previous one is answered."""
    texts = [""] * len(prompts)
    tokens = [0] * len(prompts)
    pending = iter(range(len(prompts)))
    pending_lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client() -> None:
        barrier.wait()
        while True:
            with pending_lock:
                index = next(pending, None)
            if index is None:
                return
            result = handler.generate(GenerationRequest(prompt=prompts[index], params=params[index]))
            texts[index], tokens[index] = result.text, result.completion_tokens

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return texts, sum(tokens), time.perf_counter() - started


def run_baseline(
    model: torch.nn.Module,
    tokenizer: object,
    *,
    device: str,
    prompts: list[str],
    params: list[SamplingParams],
) -> tuple[list[str], int, float]:
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    # The engine applies the model's own top-k and repetition penalty; so does the baseline.
    model_sampling = ModelSampling.of(model)  # type: ignore[arg-type]
    texts, total = [], 0
    started = time.perf_counter()
    for prompt, p in zip(prompts, params, strict=True):
        ids = torch.tensor([tokenizer.encode(prompt)], device=device)  # type: ignore[attr-defined]
        torch.manual_seed(p.seed if p.seed is not None else 0)
        config = GenerationConfig(
            do_sample=p.temperature > 0,
            temperature=p.temperature or None,
            top_p=p.top_p,
            top_k=model_sampling.top_k,
            repetition_penalty=model_sampling.repetition_penalty,
            max_new_tokens=p.max_tokens,
            eos_token_id=eos,
            pad_token_id=eos,
        )
        with torch.inference_mode():
            output = model.generate(ids, generation_config=config)[0, ids.shape[1] :].tolist()  # type: ignore[operator]
        if eos in output:
            output = output[: output.index(eos) + 1]
        total += len(output)
        texts.append(decode_tokens(tokenizer, [t for t in output if t != eos]))  # type: ignore[arg-type]
    return texts, total, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local model directory")
    source.add_argument("--random-qwen", action="store_true", help="random Qwen2.5-0.5B-shaped model")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--requests", type=int, default=32, help="requests per level (at least the concurrency)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per level; the fastest counts")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)  # the baseline runs in this thread

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_random_qwen(Path(scratch)) if args.random_qwen else Path(args.model)
        rows = benchmark(args, model_dir=model_dir, prompts=PROMPTS, levels=levels)

    device = resolve_device(args.device)
    print(
        f"\nmodel: {'random Qwen2.5-0.5B' if args.random_qwen else args.model}  device: {device}  "
        f"torch threads: {torch.get_num_threads()}  max_tokens: {args.max_tokens}  "
        f"temperature: {args.temperature}\n"
    )
    print("| concurrency | engine tok/s | baseline tok/s | speedup | identical outputs |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.concurrency} | {row.engine_tps:.1f} | {row.baseline_tps:.1f} | "
            f"{row.engine_tps / row.baseline_tps:.2f}x | {row.identical:.0%} |"
        )
    if args.out:
        report = {
            "model": "random-qwen2.5-0.5b" if args.random_qwen else args.model,
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "max_tokens": args.max_tokens,
            "requests_per_level": args.requests,
            "repeat": args.repeat,
            "temperature": args.temperature,
            "rows": [
                {
                    **asdict(r),
                    "engine_tps": r.engine_tps,
                    "baseline_tps": r.baseline_tps,
                    "speedup": r.engine_tps / r.baseline_tps,
                }
                for r in rows
            ],
        }
        Path(args.out).write_text(json.dumps(report, indent=2))


def benchmark(
    args: argparse.Namespace, *, model_dir: Path, prompts: list[str], levels: list[int]
) -> list[Row]:
    handler = LLMHandler(
        EngineConfig(
            model=str(model_dir),
            device=args.device,
            dtype=args.dtype,
            max_batch_size=max(levels),
            torch_threads=args.threads,
        )
    )
    device = resolve_device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, dtype=resolve_dtype(args.dtype, device=device)
    )
    model.to(device)  # type: ignore[call-arg, arg-type]
    model.eval()

    def workload(n: int, seed_base: int) -> tuple[list[str], list[SamplingParams]]:
        params = [
            SamplingParams(
                temperature=args.temperature,
                top_p=args.top_p,
                max_tokens=args.max_tokens,
                seed=seed_base + i,
            )
            for i in range(n)
        ]
        return [prompts[i % len(prompts)] for i in range(n)], params

    warm_prompts, warm_params = workload(2, 10_000)
    run_engine(handler, concurrency=2, prompts=warm_prompts, params=warm_params)
    run_baseline(model, tokenizer, device=device, prompts=warm_prompts[:1], params=warm_params[:1])

    rows = []
    for level in levels:
        level_prompts, params = workload(max(level, args.requests), level * 1000)
        engine_s = base_s = float("inf")
        # Alternating runs, keeping each side's fastest, so that load from other processes on a
        # shared machine skews both sides alike. Seeded requests make every repeat identical.
        for _ in range(args.repeat):
            engine_texts, engine_tokens, seconds = run_engine(
                handler, concurrency=level, prompts=level_prompts, params=params
            )
            engine_s = min(engine_s, seconds)
            base_texts, base_tokens, seconds = run_baseline(
                model, tokenizer, device=device, prompts=level_prompts, params=params
            )
            base_s = min(base_s, seconds)
        identical = sum(a == b for a, b in zip(engine_texts, base_texts, strict=True)) / len(base_texts)
        rows.append(Row(level, engine_tokens, engine_s, base_tokens, base_s, identical))
        print(
            f"concurrency {level}: engine {engine_tokens / engine_s:.1f} tok/s, "
            f"baseline {base_tokens / base_s:.1f} tok/s, identical {identical:.0%}",
            flush=True,
        )
    handler.shutdown()
    return rows


if __name__ == "__main__":
    main()
