"""The padding-free forward: a batch of texts runs as one packed sequence, so padding costs nothing.

A padded batch of texts of lengths l_1..l_B costs B · max(l) tokens in every linear layer; on the
quickstart's retrieval batches 37 % of those tokens are padding (docs/training.md, "Padding-free").
Packed, the texts are concatenated into one row of Σ l_i tokens (sentence-transformers'
`DataCollatorWithFlattening` path, with `cu_seq_lens` marking where each text starts), so every
linear layer, layer norm and activation sees real tokens only, in one large matrix product.

Only attention must keep texts apart. sentence-transformers flattens only when flash-attention's
variable-length kernel is installed (a CUDA package); this module registers an attention function
with transformers (`AttentionInterface`) that works everywhere:

- on a GPU with `flash_attn` installed: `flash_attn_varlen_func` (dropout included);
- on a GPU, bf16/fp16 and no attention dropout (evaluation, encoding): torch's own
  `torch.nn.attention.varlen.varlen_attn` (flash attention, torch >= 2.9);
- anywhere else (CPUs; fp32; training with attention dropout and no `flash_attn`): texts sorted by
  length, attention run per group of `GROUP` texts with `scaled_dot_product_attention`, each group
  padded to its own longest text (attention is a few percent of BERT's FLOPs at these lengths, so
  the little padding left there costs little).

Embeddings and gradients equal the padded batch's up to float rounding (tests/test_padding_free.py);
dropout draws other masks than the padded layout would, the same distribution. Padded inputs (e.g.
the server's bucketed batches) still work on an enabled model: the function hands them to SDPA.

`enable_padding_free(model)` switches a SentenceTransformer over when its architecture allows it
(a torch transformer that routes attention through transformers' attention interface, supports SDPA
for padded inputs, and a Pooling module that reads packed output) and returns False, changing
nothing, when it does not: the padded forward then runs as before.
"""

from __future__ import annotations

import logging
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

IMPLEMENTATION = "conan_varlen"
GROUP = 16  # texts per attention group on the SDPA path (measured: 8-32 differ by < 2 % on a CPU)
_FLASH_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
_plans = threading.local()  # the last packed batch's grouping, reused by every layer of its forward


def _group_plan(cu: Tensor, group: int = GROUP):
    """Per group of `group` texts (sorted by length): (token index [n, L], key mask [n, L] or None),
    and `inverse`, which puts the groups' tokens back in packed order. Cached per `cu` tensor: the
    plan is the same for all layers and for the backward pass."""
    cached = getattr(_plans, "last", None)
    if cached is not None and cached[0] is cu and cached[1] == group:
        return cached[2]
    lengths = (cu[1:] - cu[:-1]).cpu()
    starts = cu[:-1].cpu().long()
    order = torch.argsort(lengths, stable=True)
    groups, flat = [], []
    for first in range(0, len(order), group):
        members = order[first:first + group]
        lens, begin = lengths[members].long(), starts[members]
        width = int(lens.max())
        offsets = torch.arange(width)
        valid = offsets[None, :] < lens[:, None]
        index = torch.where(valid, begin[:, None] + offsets[None, :], 0)
        groups.append((index.to(cu.device), None if bool(valid.all()) else valid.to(cu.device)))
        flat.append(index[valid])
    packed_order = torch.cat(flat)
    inverse = torch.empty_like(packed_order)
    inverse[packed_order] = torch.arange(len(packed_order))
    plan = (groups, inverse.to(cu.device))
    _plans.last = (cu, group, plan)
    return plan


def grouped_attention(query: Tensor, key: Tensor, value: Tensor, cu: Tensor, *, scaling: float | None,
                      dropout: float = 0.0, group: int = GROUP) -> Tensor:
    """Attention over packed texts: [T, H, d] in, [T, H, d] out; text i is rows cu[i]:cu[i+1] and
    attends only to itself."""
    heads, dim = query.shape[1:]
    groups, inverse = _group_plan(cu, group)
    outputs = []
    for index, valid in groups:
        rows, width = index.shape
        flat = index.reshape(-1)
        q, k, v = (x.index_select(0, flat).reshape(rows, width, heads, dim).transpose(1, 2) for x in (query, key, value))
        mask = None if valid is None else valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
        out = out.transpose(1, 2)
        outputs.append(out.reshape(rows * width, heads, dim) if valid is None else out[valid])
    return torch.cat(outputs).index_select(0, inverse)


def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling=None,
                     dropout: float = 0.0, **kwargs):
    """transformers' attention-function contract ([B, H, L, d] in, ([B, L, H, d], weights) out).
    Packed input (kwargs carry `cu_seq_lens_q`): variable-length attention; padded input: SDPA."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed attention expects one row of packed texts, got a batch of {query.shape[0]}")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, H, d]
    longest = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
    half = q.dtype in (torch.float16, torch.bfloat16)
    out = None
    if q.is_cuda and half:
        flash = _flash_attn_varlen()
        if flash is not None:
            out = flash(q, k, v, cu.int(), cu.int(), longest, longest, dropout_p=dropout, softmax_scale=scaling)
        elif dropout == 0.0 and (varlen := _torch_varlen()) is not None:
            out = varlen(q, k, v, cu.int(), cu.int(), longest, longest, scale=scaling)
    if out is None:
        out = grouped_attention(q, k, v, cu, scaling=scaling, dropout=dropout)
    return out[None], None


def _no_padding_mask(*args, attention_mask=None, **kwargs):
    """The mask builder for our implementation: SDPA's for padded input; none for packed input (no
    2-D mask there: `varlen_attention` keeps the texts apart)."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make `IMPLEMENTATION` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, varlen_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _no_padding_mask)


def _position_offset(auto_model) -> int:
    """The first position id of a text: 0, or padding_idx + 1 for RoBERTa-style embeddings (XLM-R)."""
    for module in auto_model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        if isinstance(padding_idx, int) and isinstance(getattr(module, "position_embeddings", None), torch.nn.Embedding):
            return padding_idx + 1
    return 0


def unsupported_reason(model) -> str | None:
    """Why `model` cannot run padding-free (None: it can)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers import DataCollatorWithFlattening  # noqa: F401
    except ImportError as exc:
        return f"this sentence-transformers / transformers has no packed-input support ({exc})"
    modules = list(model)
    if not modules or not hasattr(modules[0], "auto_model") or not hasattr(modules[0], "can_flatten_inputs"):
        return "the first module is not a sentence-transformers Transformer with packed-input support"
    first = modules[0]
    if getattr(first, "backend", "torch") != "torch":
        return f"backend {first.backend!r} (only the torch backend packs)"
    auto = first.auto_model
    if not (getattr(auto, "_supports_attention_backend", False) and getattr(auto, "_supports_sdpa", False)):
        return f"{type(auto).__name__} does not route attention through transformers' attention interface"
    if getattr(auto.config, "is_decoder", False):
        return "a decoder (causal attention)"
    if any(params.get("method") != "forward" for params in first.modality_config.values()):
        return "a model method other than forward"
    poolings = [m for m in modules if isinstance(m, Pooling)]
    if len(poolings) != 1 or not hasattr(poolings[0], "_forward_flattened") or modules[1] is not poolings[0]:
        return "no Pooling module right after the Transformer that reads packed output"
    return None


def enable_padding_free(model) -> bool:
    """Run `model`'s text batches packed from now on (training, `encode`, evaluation). Returns False and
    changes nothing when the architecture does not allow it (`unsupported_reason`)."""
    reason = unsupported_reason(model)
    if reason is not None:
        logger.info("padding-free forward off: %s", reason)
        return False
    from transformers import DataCollatorWithFlattening

    register()
    first = model[0]
    first.auto_model.config._attn_implementation = IMPLEMENTATION
    first.data_collator = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_position_ids=True,
                                                     return_seq_idx=True)
    if getattr(first, "model_forward_params", None) is not None:
        first.model_forward_params |= set(_FLASH_KEYS)
    first._flatten_position_offset = _position_offset(first.auto_model)
    first.can_flatten_inputs = True
    return True


def disable_padding_free(model) -> None:
    """Back to padded batches (SDPA)."""
    first = model[0]
    if getattr(first, "can_flatten_inputs", False):
        first.can_flatten_inputs = False
    if getattr(first.auto_model.config, "_attn_implementation", None) == IMPLEMENTATION:
        first.auto_model.config._attn_implementation = "sdpa"


def is_padding_free(model) -> bool:
    first = model[0]
    return bool(getattr(first, "can_flatten_inputs", False)) and \
        getattr(first.auto_model.config, "_attn_implementation", None) == IMPLEMENTATION
