"""What the text-encoder adapters share: token inputs, a tokenizer, sequence-length sizes, text tasks."""

from __future__ import annotations

import torch

from .base import ArchitectureAdapter


DEFAULT_SEQUENCE_LENGTH = 128  # tokens per sequence when sizes are counted without an explicit length

TEXT_PIPELINE_TAGS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
}


def text_snp_classes(stock_prefix: str, classes: dict[str, type]) -> dict[str, tuple[type, str]]:
    """{stock or SNP class name: (SNP class, Auto class name)} for the usual text heads; `classes` maps a head suffix
    ('Model', 'ForSequenceClassification', ...) to its SNP class."""
    autos = {
        "Model": "AutoModel",
        "ForSequenceClassification": "AutoModelForSequenceClassification",
        "ForTokenClassification": "AutoModelForTokenClassification",
        "ForQuestionAnswering": "AutoModelForQuestionAnswering",
        "ForMaskedLM": "AutoModelForMaskedLM",
    }
    table = {}
    for suffix, snp_cls in classes.items():
        table[stock_prefix + suffix] = table["SNP" + stock_prefix + suffix] = (snp_cls, autos[suffix])
    return table


class TextEncoderAdapter(ArchitectureAdapter):
    """Base of the text encoders: `input_ids` + `attention_mask`, a tokenizer, sizes at a sequence length. Hidden
    channels are not pruned: the width of token and sentence embeddings is part of the model's interface."""

    modality = "text"
    main_input_name = "input_ids"
    supports_hidden_pruning = False
    pipeline_tags = TEXT_PIPELINE_TAGS
    uses_token_type_ids = True
    # a sentence's tokens are nearly collinear after attention, so the refit sees about as many independent rows as
    # sentences and over-fits a few dozen of them without a strong pull towards the original weights
    # (benchmarks/results/minilm_research.md section 3; chosen on the tune split with benchmarks/minilm.py)
    # ... and cross-validated per projection it did better still (MiniLM tune split, with the residual target and
    # the sensitivity candidate: 70% MACs 0.953 / 0.945 -> 0.956 / 0.948, 50% 0.900 / 0.879 -> 0.907 / 0.887; prune
    # time +30-65%); 0.3 when the calibration data is a single batch
    default_ridge = "cv"
    fallback_ridge = 0.3
    # ... and more sentences keep helping (MiniLM tune split, 70% MACs: 64 -> 0.925, 256 -> 0.940, 512 -> 0.944;
    # 50%: 0.763 / 0.806 / 0.818; with today's refit, cosine / Spearman 512 -> 1024: 70% 0.957 / 0.954 -> 0.964 /
    # 0.960, 50% 0.908 / 0.896 -> 0.920 / 0.910, for 1.4x the prune time: benchmarks/results/minilm_calibration1056.txt)
    default_calibration_samples = 1024
    # the MiniLM numbers were all measured with 32 held-out sentences (64 not measured for text)
    default_validation_samples = 32
    # post-norm blocks: `LayerNorm(dense(x) + residual)`; the sum is the norm's input
    residual_sums = {"o_proj": "attention_norm", "fc2": "output_norm"}
    # fitting the sum (so each refit also absorbs the drift from earlier layers) measured better on the MiniLM tune
    # split: 50% MACs cosine / Spearman 0.817 / 0.830 -> 0.837 / 0.856, 70% 0.944 / 0.946 -> 0.947 / 0.948
    # (ViT/DeiT keep 'output': on the tune model patches-vit at 30% MACs 'residual' doubled the logit KL)
    default_refit_target = "residual"
    # and the validated allocation also tries measured loss curves: on the MiniLM tune split, with the residual
    # target, 50% MACs 0.837 / 0.856 (validated) -> 0.900 / 0.879 (sensitivity), 70% 0.947 / 0.948 -> 0.953 / 0.945
    sensitivity_candidate = True
    # a base model's candidates and sensitivity curves compared on its sentence embeddings (1 - cosine of the mean-
    # pooled hidden states) rather than per token: MiniLM tune split, 50% MACs 0.907 / 0.887 -> 0.908 / 0.896, 70%
    # 0.956 / 0.948 -> 0.957 / 0.954 (benchmarks/results/minilm_tune_pooled_divergence.txt)
    pooled_divergence = True

    @classmethod
    def num_tokens(cls, config, input_size=None) -> int:
        """`input_size` tokens per sequence (default `DEFAULT_SEQUENCE_LENGTH`, at most the position table)."""
        length = int(input_size or DEFAULT_SEQUENCE_LENGTH)
        return min(length, cls.max_positions(config))

    @classmethod
    def max_positions(cls, config) -> int:
        return config.max_position_embeddings

    def load_preprocessor(self, source: str | None):
        from transformers import AutoTokenizer

        if source is None:
            raise ValueError(
                f"{type(self.model).__name__} is a text model: pass its tokenizer (SNPPruner(model, tokenizer=...) "
                "or SNPPruner.from_pretrained(path_or_hub_id))."
            )
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"Could not load the tokenizer of {source!r}: {err} Pass `tokenizer=...` to SNPPruner."
            ) from err

    def onnx_inputs(self, batch_size: int, seed: int = 0, variant: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        length = 16 + 7 * variant
        vocab = self.config.vocab_size
        ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, length), generator=generator)
        mask = torch.ones_like(ids)
        if variant and batch_size > 1:  # a padded sequence too
            mask[-1, length // 2 :] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self.uses_token_type_ids:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        return inputs

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {0: "batch_size", 1: "sequence_length"} for name in self.onnx_inputs(1)}

    def onnx_output_names(self) -> list[str]:
        name = self.class_name
        if name.endswith("ForQuestionAnswering"):
            return ["start_logits", "end_logits"]
        if name.endswith("Model"):
            return ["last_hidden_state"] + (
                ["pooler_output"] if getattr(self.model, "pooler", None) is not None else []
            )
        return ["logits"]

    @classmethod
    def card_snippet(cls, class_name: str, name: str) -> str:
        return cls._card_snippet_with_preprocessor(class_name, name, "AutoTokenizer", "tokenizer")


__all__ = ["DEFAULT_SEQUENCE_LENGTH", "TextEncoderAdapter", "text_snp_classes"]
