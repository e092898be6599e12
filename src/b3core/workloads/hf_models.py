"""`hf/NAME`: a Hugging Face transformers model built from its configuration class's defaults,
with random weights. NAME is a model type (`hf/gpt2`, `hf/bert`): the configuration ships in
the transformers package, so nothing is downloaded. A hub id (`hf/bert-base-uncased`) would need
the network, and is refused in one line.
"""

from __future__ import annotations

import difflib

from torch import nn

from b3core.errors import B3Error
from b3core.workloads.info import CAUSAL_LM, CLASSIFICATION
from b3core.workloads.model_spec import ModelSpec

HF_PREFIX = "hf/"
HF_INSTALL = 'pip install "b3core[hf]"'
DEFAULT_SEQ_LEN = 128
# encoders that transformers also maps to a causal-LM head (one that wants is_decoder=True):
# b3 trains them as what they are, sequence classifiers
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta-v2")


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise B3Error(f"hf/NAME models need transformers: {HF_INSTALL}") from exc
    return transformers


class LogitsOnly(nn.Module):
    """A transformers model as b3 trains models: token ids in, logits out (no cache kept)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


def hf_spec(name: str) -> ModelSpec:
    transformers = _transformers()
    from transformers.models.auto import modeling_auto

    model_type = name.removeprefix(HF_PREFIX)
    known = transformers.CONFIG_MAPPING
    if model_type not in known:
        close = difflib.get_close_matches(model_type, list(known.keys()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(HF_PREFIX + c for c in close)}?" if close else ""
        raise B3Error(
            f"{name}: not a transformers model type{hint} (a hub id would need the network, "
            "and b3 never downloads: name the model type, e.g. hf/gpt2 or hf/bert)"
        )
    config = known[model_type]()
    causal = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if model_type in causal and model_type not in ENCODERS:
        task, auto = CAUSAL_LM, transformers.AutoModelForCausalLM
    elif model_type in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        task, auto = CLASSIFICATION, transformers.AutoModelForSequenceClassification
    else:
        raise B3Error(f"{name}: b3 trains causal language models and sequence classifiers only")
    context = getattr(config, "max_position_embeddings", None)  # GPT-2's n_positions, too

    def build(vocab_size: int, num_classes: int) -> nn.Module:
        fresh = known[model_type](vocab_size=vocab_size, num_labels=num_classes)
        if getattr(fresh, "pad_token_id", None) is None:
            fresh.pad_token_id = 0  # classifiers pool at the last non-pad token
        return LogitsOnly(auto.from_config(fresh))

    return ModelSpec(
        name=name,
        builder=build,
        input_shape=(min(DEFAULT_SEQ_LEN, context or DEFAULT_SEQ_LEN),),
        input_dtype="int64",
        vocab_size=config.vocab_size,
        task=task,
        context_size=context,
        resizable=False,
        origin="transformers",
        package="transformers",
        version=transformers.__version__,
        description=f"transformers' {type(config).__name__} defaults, random weights",
    )
