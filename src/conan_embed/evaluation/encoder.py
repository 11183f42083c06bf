"""The model as mteb sees it: prompts made explicit, Matryoshka truncation, and an embedding cache.

What mteb v2's own `SentenceTransformerEncoderWrapper` sends (mteb 2.26, sentence-transformers 6):
retrieval and reranking queries go through `model.encode_query(prompt=model.prompts["query"])`,
passages through `model.encode_document(prompt=model.prompts["document"])`, and every text of
STS, pair classification, classification and clustering through plain `model.encode(prompt=None)`,
i.e. **with no prefix at all** (unless the model's prompts carry a key named after the task or its
type, e.g. "STS"). e5 models want "query: " on symmetric tasks and for embeddings used as features
(classification, clustering; the e5 model cards' FAQ), so the suite adds the model's `symmetric_prompt` (default: its "query" prompt) under each
symmetric task type. Task-specific keys in the model's own prompts still win.

Embeddings are truncated to `dim` (Matryoshka) and L2-normalised, so cosine, dot product and
Euclidean distance all rank the same way. They are cached (full size) per (encode function, prompt,
text) for the whole suite run: reranking candidates that retrieval already encoded, questions one
symmetric task already encoded for another, and a second run at another dim cost nothing.
"""

from __future__ import annotations

import numpy as np
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from mteb.types import PromptType

SYMMETRIC_TASK_TYPES = ("STS", "PairClassification", "Classification", "Clustering")


def suite_prompts(model_prompts: dict | None, symmetric_prompt: str | None = "query",
                  task_names=()) -> dict[str, str]:
    """mteb `model_prompts` for the suite: the model's own (mteb-valid keys: prompt types, task types,
    mteb task names, and the suite's `task_names`, each optionally suffixed "-query"/"-document"),
    plus, for every symmetric task type without its own entry, the model's `symmetric_prompt` prompt
    (if the model has one)."""
    prompts = {k: v for k, v in (model_prompts or {}).items() if v is not None}
    ours = {k: v for k, v in prompts.items()
            if k.removesuffix("-query").removesuffix("-document") in set(task_names)}
    rest = {k: v for k, v in prompts.items() if k not in ours}
    valid, _invalid = AbsEncoder.validate_task_to_prompt_name(rest, raise_for_invalid_keys=False)
    out = {**(valid or {}), **ours}
    if symmetric_prompt is not None and symmetric_prompt in prompts:
        for task_type in SYMMETRIC_TASK_TYPES:
            out.setdefault(task_type, prompts[symmetric_prompt])
    return out


class SuiteEncoder(SentenceTransformerEncoderWrapper):
    """mteb encoder over a loaded SentenceTransformer (the model is not modified)."""

    def __init__(self, model, *, dim: int | None = None, symmetric_prompt: str | None = "query",
                 show_progress: bool = True, cache: bool | dict = True, task_names=()) -> None:
        # no model_prompts argument: mteb would otherwise overwrite `model.prompts` with them
        super().__init__(model)
        self.model_prompts = suite_prompts(getattr(model, "prompts", None), symmetric_prompt, task_names)
        self.dim = dim
        self.show_progress = show_progress
        # pass a dict to share encodings between runs of the same model (e.g. at several dims)
        self.use_cache = cache is not False
        self._cache: dict[tuple[str, str | None], dict[str, np.ndarray]] = cache if isinstance(cache, dict) else {}
        self.calls: list[dict] = []  # one record per encode call: task, prompt type, prompt, counts

    def resolve_prompt(self, task_metadata, prompt_type: PromptType | None) -> str | None:
        name = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
        return self.model_prompts.get(name) if name else None

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        prompt = self.resolve_prompt(task_metadata, prompt_type)
        if prompt_type == PromptType.query:
            fn_name = "encode_query"
        elif prompt_type == PromptType.document:
            fn_name = "encode_document"
        else:
            fn_name = "encode"
        store = self._cache.setdefault((fn_name, prompt), {}) if self.use_cache else {}
        todo = [t for t in dict.fromkeys(texts) if t not in store]
        self.calls.append({
            "task": task_metadata.name, "prompt_type": prompt_type.value if prompt_type else None,
            "prompt": prompt, "texts": len(texts), "encoded": len(todo),
        })
        if todo:
            emb = getattr(self.model, fn_name)(
                todo, prompt=prompt, batch_size=kwargs.get("batch_size", 32),
                show_progress_bar=self.show_progress, convert_to_numpy=True,
            )
            store.update(zip(todo, np.asarray(emb, dtype=np.float32)))
        if not texts:
            return np.zeros((0, self.dim or self.model.get_embedding_dimension()), dtype=np.float32)
        # the cache holds full-size embeddings, so one cache serves every Matryoshka dim
        emb = np.stack([store[t] for t in texts])[:, : self.dim]
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
