"""Model merging as LM-Cocktail does it (Xiao et al., arXiv 2311.13534): a weighted average of the
parameters of models fine-tuned from one base, with the weights given or found from a few examples
(docs/forgetting.md says where ours differs).

    merge_models(["runs/x/finetune/model", "e5-small"], "runs/x/merged", weights=[0.6, 0.4])
    merge_models([...], out, examples=merge_examples(5))      # weights = softmax(-loss / temperature)
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from conan_embed.errors import InputError
from conan_embed.files import write_json
from conan_embed.logs import get_logger

log = get_logger("merge")
DEFAULT_TEMPERATURE = 5.0  # LM-Cocktail's: losses a nat apart get weights ~0.55 / 0.45
SCORE_TEMPERATURE = 0.05  # the InfoNCE temperature the examples are scored with (LM-Cocktail's, and ours)


def check_weights(weights, n_models: int) -> list[float]:
    """Non-negative finite weights, one per model, not all zero; scaled to sum to 1."""
    weights = [float(w) for w in weights]
    if len(weights) != n_models:
        raise InputError(f"{len(weights)} weights for {n_models} models: give one weight per model", field="weights")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) == 0:
        raise InputError(f"weights must be finite, >= 0 and not all 0, got {weights}", field="weights")
    return [w / sum(weights) for w in weights]


def weights_from_losses(losses, temperature: float = DEFAULT_TEMPERATURE) -> list[float]:
    """LM-Cocktail's few-shot weights: softmax(-loss / temperature) over the models."""
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}", field="temperature")
    low = min(losses)
    exp = [math.exp(-(x - low) / temperature) for x in losses]
    return [e / sum(exp) for e in exp]


def _architecture(model) -> dict:
    """What must match for parameters to be averaged: module types, the backbone's shape-defining
    config, and every tensor's name and shape."""
    config = model[0].auto_model.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings")
    return {"modules": [type(m).__name__ for m in model],
            **{k: getattr(config, k, None) for k in keys},
            "tensors": {k: tuple(v.shape) for k, v in model.state_dict().items()}}


def check_same_architecture(models: dict[str, object]) -> None:
    """Raise an InputError naming both models and the first difference."""
    (first, ref), *rest = ((name, _architecture(m)) for name, m in models.items())
    for name, arch in rest:
        for key in ref:
            if arch[key] != ref[key]:
                if key == "tensors":
                    diff = sorted(set(ref[key].items()) ^ set(arch[key].items()))[:3]
                    detail = f"tensors differ, e.g. {diff}"
                else:
                    detail = f"{key} {ref[key]!r} vs {arch[key]!r}"
                raise InputError(f"cannot merge {first} and {name}: different architectures ({detail}); merge "
                                 f"only models trained from the same base", field="models")


def example_loss(model, examples: list[dict], batch_size: int = 8) -> float:
    """The mean InfoNCE loss of `model` on few-shot retrieval examples ({query, positive, negatives}),
    with its own query and passage prompts, in-batch and hard negatives (as our fine-tuning scores them)."""
    import torch

    from conan_embed.losses import info_nce
    from conan_embed.modeling import text_prompt

    prompts = getattr(model, "prompts", None) or {}
    q_prompt, p_prompt = text_prompt(prompts, "query") or "", text_prompt(prompts, "passage") or ""
    losses = []
    with torch.inference_mode():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            k = min(len(e["negatives"]) for e in batch)
            q = model.encode([q_prompt + e["query"] for e in batch], convert_to_tensor=True)
            p = model.encode([p_prompt + e["positive"] for e in batch], convert_to_tensor=True)
            n = model.encode([p_prompt + t for e in batch for t in e["negatives"][:k]], convert_to_tensor=True)
            losses.append(float(info_nce(q, p, n.reshape(len(batch), k, -1) if k else None, SCORE_TEMPERATURE))
                          * len(batch))
    return sum(losses) / len(examples)


def _check_examples(examples) -> dict[str, list[dict]]:
    if isinstance(examples, list):
        examples = {"examples": examples}
    if not isinstance(examples, dict) or not examples:
        raise InputError("examples must be a non-empty {task: [rows]} mapping or a list of rows", field="examples")
    for task, rows in examples.items():
        if not rows:
            raise InputError(f"task {task!r} has no examples", field="examples")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                    for k in ("query", "positive")):
                raise InputError(f"task {task!r}: each example needs a non-empty 'query' and 'positive' "
                                 f"(and a list 'negatives')", row=i, field="examples")
            if not isinstance(row.get("negatives", []), list):
                raise InputError(f"task {task!r}: 'negatives' must be a list of texts", row=i, field="negatives")
            row.setdefault("negatives", [])
    return examples


def merge_models(models, output: str | Path, *, weights=None, examples=None,
                 temperature: float = DEFAULT_TEMPERATURE, names=None, show_progress: bool = True) -> dict:
    """Average the parameters of `models` (folders or shipped names, same architecture) into `output`,
    a plain sentence-transformers folder with the first model's modules, tokenizer, prompts and
    Matryoshka dims. `weights`: one per model (scaled to sum to 1); or None with `examples` ({task:
    [{query, positive, negatives}]}, a few per task): each model's mean example loss over the tasks,
    weights = softmax(-loss / temperature) (LM-Cocktail). Writes and returns merge.json's content."""
    import torch

    from conan_embed.model_loading import load_embedder
    from conan_embed.modeling import save_embedder

    start = time.perf_counter()
    models = [str(m) for m in models]
    if len(models) < 2:
        raise InputError(f"merge needs at least two models, got {len(models)}", field="models")
    if (weights is None) == (examples is None):
        raise InputError("give either weights (one per model) or examples to find them from", field="weights")
    names = list(names or models)
    loaded = {name: load_embedder(path, device="cpu") for name, path in zip(names, models)}
    check_same_architecture(loaded)
    losses = None
    if weights is None:
        examples = _check_examples(examples)
        losses = {name: {task: example_loss(m, rows) for task, rows in examples.items()} for name, m in loaded.items()}
        weights = weights_from_losses([sum(v.values()) / len(v) for v in losses.values()], temperature)
        if show_progress:
            for name, w in zip(names, weights):
                log.info(f"{name}: mean example loss {sum(losses[name].values()) / len(losses[name]):.4f} "
                         f"-> weight {w:.3f}")
    weights = check_weights(weights, len(models))
    states = [m.state_dict() for m in loaded.values()]
    merged = {}
    for key, ref in states[0].items():
        if ref.is_floating_point():
            total = sum(w * s[key].float() for w, s in zip(weights, states))
            merged[key] = total.to(ref.dtype)
        else:  # integer buffers (position ids): the same in every model of one architecture
            if any(not torch.equal(s[key], ref) for s in states[1:]):
                raise InputError(f"cannot merge: integer buffer {key!r} differs between models", field="models")
            merged[key] = ref
    target = loaded[names[0]]
    target.load_state_dict(merged)
    output = Path(output)
    save_embedder(target, output)
    info = {"models": dict(zip(names, models)), "weights": dict(zip(names, weights)),
            "method": "given weights" if losses is None else f"LM-Cocktail few-shot: softmax(-loss / {temperature})",
            "example_losses": losses, "seconds": round(time.perf_counter() - start, 1)}
    write_json(output / "merge.json", info)
    return info


def merge_examples(per_task: int = 5, seed: int = 0, negatives: int = 3) -> dict[str, list[dict]]:
    """A few examples per task for the few-shot weights, from the validation split (never test, never
    training data, which a fine-tuned model has already fitted): insuranceqa *valid* questions with their
    answers (the domain), and headline -> opening of the validation split's People's Daily articles
    (general Chinese text, what the guard tasks hold)."""
    from conan_embed.data.sources import insuranceqa_answers, insuranceqa_questions
    from conan_embed.data.splits import news_split

    rng = random.Random(seed)
    answers = insuranceqa_answers()
    questions = rng.sample(list(insuranceqa_questions("valid")), per_task)
    domain = [{"query": q.text, "positive": answers[q.answers[0]],
               "negatives": [answers[n] for n in q.negatives[:negatives]]} for q in questions]
    articles = news_split("valid")
    picked = rng.sample(articles, per_task * (negatives + 1))
    news = [{"query": a.headline, "positive": a.opening(),
             "negatives": [b.opening() for b in picked[per_task + i * negatives: per_task + (i + 1) * negatives]]}
            for i, a in enumerate(picked[:per_task])]
    return {"insuranceqa-valid": domain, "news": news}
