"""The SNP DistilBERT family: stock parity, per-layer dims (eager == SDPA), save/load and masking exactness."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)

from optimum_snp.models.configuration_snp_distilbert import SNPDistilBertConfig
from optimum_snp.models.modeling_snp_distilbert import (
    SNPDistilBertForMaskedLM,
    SNPDistilBertForQuestionAnswering,
    SNPDistilBertForSequenceClassification,
    SNPDistilBertForTokenClassification,
    SNPDistilBertModel,
)


VOCAB, DIM, HEADS, LAYERS, FFN = 100, 32, 4, 2, 37
HEAD_DIM = DIM // HEADS

# (stock class, SNP class, num_labels, token-level output?)
HEAD_CLASSES = {
    "base": (DistilBertModel, SNPDistilBertModel, 2, True),
    "seq-cls": (DistilBertForSequenceClassification, SNPDistilBertForSequenceClassification, 3, False),
    "tok-cls": (DistilBertForTokenClassification, SNPDistilBertForTokenClassification, 3, True),
    "qa": (DistilBertForQuestionAnswering, SNPDistilBertForQuestionAnswering, 2, True),
    "mlm": (DistilBertForMaskedLM, SNPDistilBertForMaskedLM, 2, True),
}

# layer 0: 3 heads, qk 5, v 7, ffn 20; layer 1: 4 heads, qk 8, v 3, ffn 11
PER_LAYER = dict(num_heads_per_layer=[3, 4], qk_head_dims=[5, 8], v_head_dims=[7, 3], intermediate_sizes=[20, 11])


def stock_config(attn: str = "eager", num_labels: int = 2) -> DistilBertConfig:
    return DistilBertConfig(
        vocab_size=VOCAB,
        dim=DIM,
        n_heads=HEADS,
        n_layers=LAYERS,
        hidden_dim=FFN,
        max_position_embeddings=16,
        initializer_range=0.3,
        num_labels=num_labels,
        attn_implementation=attn,
    )


def snp_config_from(config: DistilBertConfig, attn: str, **per_layer) -> SNPDistilBertConfig:
    kwargs = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        kwargs.pop(key, None)
    return SNPDistilBertConfig(**kwargs, attn_implementation=attn, **per_layer)


def noisy_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random biases / LayerNorm affine too (the default init makes them 0 / 1, which hides bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch: rows of length 9, 5 and 7 (pad id 0)."""
    ids = torch.randint(1, VOCAB, (3, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 7:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def outputs_of(out) -> dict[str, torch.Tensor]:
    names = ("last_hidden_state", "logits", "start_logits", "end_logits", "loss")
    return {name: getattr(out, name) for name in names if getattr(out, name, None) is not None}


def labels_for(kind: str, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    if kind == "seq-cls":
        return {"labels": torch.randint(0, 3, (ids.shape[0],), generator=gen)}
    if kind == "tok-cls":
        return {"labels": torch.randint(0, 3, ids.shape, generator=gen)}
    if kind == "mlm":
        return {"labels": torch.randint(0, VOCAB, ids.shape, generator=gen)}
    if kind == "qa":
        return {
            "start_positions": torch.randint(0, 5, (ids.shape[0],), generator=gen),
            "end_positions": torch.randint(0, 5, (ids.shape[0],), generator=gen),
        }
    return {}


def assert_close_on_tokens(
    a: dict, b: dict, mask: torch.Tensor, token_level: bool, atol: float = 1e-5, rtol: float = 1e-5
) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert x.shape == y.shape, name
        if token_level and name != "loss":  # padded positions are undefined: compare real tokens only
            x, y = x[mask.bool()], y[mask.bool()]
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", list(HEAD_CLASSES))
def test_unpruned_matches_stock(kind, attn):
    stock_cls, snp_cls, num_labels, token_level = HEAD_CLASSES[kind]
    config = stock_config(attn, num_labels)
    torch.manual_seed(0)
    stock = noisy_(stock_cls(config))
    snp = snp_cls(snp_config_from(config, attn)).eval()
    assert snp.config._attn_implementation == attn
    snp.load_state_dict(stock.state_dict(), strict=True)
    ids, mask = batch()
    labels = labels_for(kind, ids)
    with torch.no_grad():
        expected = outputs_of(stock(ids, attention_mask=mask, **labels))
        actual = outputs_of(snp(ids, attention_mask=mask, **labels))
    assert_close_on_tokens(expected, actual, mask, token_level)
    if kind == "mlm":
        assert snp.vocab_projector.weight is snp.distilbert.embeddings.word_embeddings.weight


def test_unpruned_config_defaults_and_validation():
    config = snp_config_from(stock_config(), "eager")
    assert config.model_type == "snp_distilbert"
    assert config.num_heads_per_layer == [HEADS] * LAYERS
    assert config.qk_head_dims == config.v_head_dims == [HEAD_DIM] * LAYERS
    assert config.intermediate_sizes == [FFN] * LAYERS
    assert config.original_head_dim == HEAD_DIM
    assert config.attention_scaling() == HEAD_DIM**-0.5
    base = dict(dim=DIM, n_heads=HEADS, n_layers=LAYERS)
    with pytest.raises(ValueError, match="qk_head_dims"):
        SNPDistilBertConfig(**base, qk_head_dims=[4])
    with pytest.raises(ValueError, match="intermediate_sizes"):
        SNPDistilBertConfig(**base, intermediate_sizes=[3, 0])
    with pytest.raises(ValueError, match="original_head_dim"):
        SNPDistilBertConfig(dim=DIM, n_heads=5, n_layers=LAYERS)


def per_layer_model(cls, attn: str, seed: int = 0):
    config = snp_config_from(stock_config(attn, num_labels=3), attn, **PER_LAYER)
    torch.manual_seed(seed)
    return noisy_(cls(config), seed)


def test_per_layer_dims_eager_matches_sdpa_and_trains():
    eager = per_layer_model(SNPDistilBertForMaskedLM, "eager")
    sdpa = per_layer_model(SNPDistilBertForMaskedLM, "sdpa")
    sdpa.load_state_dict(eager.state_dict(), strict=True)
    layers = eager.distilbert.transformer.layer
    assert layers[0].attention.q_lin.weight.shape == (3 * 5, DIM)
    assert layers[0].attention.v_lin.weight.shape == (3 * 7, DIM)
    assert layers[0].attention.out_lin.weight.shape == (DIM, 3 * 7)
    assert layers[1].attention.k_lin.weight.shape == (4 * 8, DIM)
    assert layers[1].attention.v_lin.weight.shape == (4 * 3, DIM)
    assert layers[0].ffn.lin1.weight.shape == (20, DIM) and layers[1].ffn.lin2.weight.shape == (DIM, 11)

    ids, mask = batch()
    labels = labels_for("mlm", ids)
    with torch.no_grad():
        out_eager = eager(ids, attention_mask=mask, labels=labels["labels"], output_attentions=True)
        out_sdpa = sdpa(ids, attention_mask=mask, labels=labels["labels"])
    assert_close_on_tokens(outputs_of(out_eager), outputs_of(out_sdpa), mask, token_level=True)
    assert [a.shape for a in out_eager.attentions] == [(3, 3, 9, 9), (3, 4, 9, 9)]
    # padded keys get no attention
    assert out_eager.attentions[0][1, :, :, 5:].abs().max() == 0

    for model in (eager, sdpa):
        model.train()
        out = model(ids, attention_mask=mask, **labels)
        out.loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert grads["distilbert.transformer.layer.1.attention.q_lin.weight"].abs().sum() > 0

    seq_cls = per_layer_model(SNPDistilBertForSequenceClassification, "sdpa")
    out = seq_cls(ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    assert out.logits.shape == (3, 3)


@pytest.mark.parametrize("cls", [SNPDistilBertForSequenceClassification, SNPDistilBertForMaskedLM])
def test_save_load_round_trip(cls, tmp_path):
    model = per_layer_model(cls, "sdpa")
    ids, mask = batch()
    with torch.no_grad():
        before = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    for name in (*PER_LAYER, "original_head_dim"):
        assert getattr(loaded.config, name) == getattr(model.config, name), name
    assert loaded.config.model_type == "snp_distilbert"
    with torch.no_grad():
        after = loaded(ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    if cls is SNPDistilBertForMaskedLM:
        assert loaded.vocab_projector.weight is loaded.distilbert.embeddings.word_embeddings.weight


# ---------------------------------------------------------------------------------------------------------------
# masking exactness: slicing a stock model == zero-masking the removed units in the stock model


def random_keep(seed: int = 0) -> list[dict]:
    """Per layer: kept heads, per kept head its kept qk / v dims (equal counts across heads), kept FFN units."""
    gen = torch.Generator().manual_seed(seed)

    def subset(n: int, k: int) -> list[int]:
        return sorted(torch.randperm(n, generator=gen)[:k].tolist())

    keep = []
    for heads, qk, v, ffn in zip(*PER_LAYER.values(), strict=True):
        kept_heads = subset(HEADS, heads)
        keep.append(
            {
                "heads": kept_heads,
                "qk": {h: subset(HEAD_DIM, qk) for h in kept_heads},
                "v": {h: subset(HEAD_DIM, v) for h in kept_heads},
                "ffn": subset(FFN, ffn),
            }
        )
    return keep


def _rows(layer_keep: dict, key: str) -> torch.Tensor:
    return torch.tensor([h * HEAD_DIM + d for h in layer_keep["heads"] for d in layer_keep[key][h]])


def slice_state_dict(state: dict, keep: list[dict]) -> dict:
    """Keeps the selected rows of q_lin/k_lin/v_lin/lin1 (weights and biases) and columns of out_lin/lin2."""
    state = dict(state)
    for i, layer_keep in enumerate(keep):
        prefix = f"distilbert.transformer.layer.{i}."
        qk, v, ffn = _rows(layer_keep, "qk"), _rows(layer_keep, "v"), torch.tensor(layer_keep["ffn"])
        for name, rows in (
            ("attention.q_lin", qk),
            ("attention.k_lin", qk),
            ("attention.v_lin", v),
            ("ffn.lin1", ffn),
        ):
            for suffix in ("weight", "bias"):
                state[f"{prefix}{name}.{suffix}"] = state[f"{prefix}{name}.{suffix}"].index_select(0, rows)
        state[f"{prefix}attention.out_lin.weight"] = state[f"{prefix}attention.out_lin.weight"].index_select(1, v)
        state[f"{prefix}ffn.lin2.weight"] = state[f"{prefix}ffn.lin2.weight"].index_select(1, ffn)
    return state


def mask_stock_(stock: torch.nn.Module, keep: list[dict]) -> torch.nn.Module:
    """Zeroes q_lin rows (removed qk dims), v_lin rows (removed v dims) and lin1 rows (removed FFN units): GELU(0)=0."""
    with torch.no_grad():
        for layer, layer_keep in zip(stock.distilbert.transformer.layer, keep, strict=True):
            for lin, key in ((layer.attention.q_lin, "qk"), (layer.attention.v_lin, "v")):
                removed = torch.ones(DIM, dtype=torch.bool)
                removed[_rows(layer_keep, key)] = False
                lin.weight[removed] = 0
                lin.bias[removed] = 0
            removed = torch.ones(FFN, dtype=torch.bool)
            removed[layer_keep["ffn"]] = False
            layer.ffn.lin1.weight[removed] = 0
            layer.ffn.lin1.bias[removed] = 0
    return stock


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_sliced_equals_zero_masked_stock(attn):
    config = stock_config(attn)
    torch.manual_seed(0)
    stock = noisy_(DistilBertForMaskedLM(config))
    keep = random_keep()
    sliced = SNPDistilBertForMaskedLM(snp_config_from(config, attn, **PER_LAYER)).eval()
    sliced.load_state_dict(slice_state_dict(stock.state_dict(), keep), strict=True)
    assert sliced.distilbert.transformer.layer[0].attention.scaling == HEAD_DIM**-0.5  # the ORIGINAL scale
    ids, mask = batch()
    with torch.no_grad():
        unpruned = stock(ids, attention_mask=mask).logits
        expected = mask_stock_(stock, keep)(ids, attention_mask=mask).logits
        actual = sliced(ids, attention_mask=mask).logits
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)
    assert (unpruned - expected).abs().max() > 1e-2  # pruning changed the model: the comparison is not vacuous


# ---- through the pipeline (the adapter) ------------------------------------------------------------------------
def _stock(cls, seed=0):
    from transformers import DistilBertConfig

    from .text_utils import WORDS

    torch.manual_seed(seed)
    labels = 2 if cls.__name__.endswith("QuestionAnswering") else 3
    config = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=48, vocab_size=len(WORDS) + 5,
                              max_position_embeddings=64, num_labels=labels, initializer_range=0.3)  # fmt: skip
    config._attn_implementation = "eager"  # torch's flop counter sees eager attention's matmuls
    model = cls(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                param.normal_(0, 0.2).add_(1.0 if name.endswith("weight") else 0.0)
    return model.eval()


PIPELINE_CLASSES = ["DistilBertModel", "DistilBertForSequenceClassification", "DistilBertForTokenClassification",
                    "DistilBertForQuestionAnswering", "DistilBertForMaskedLM"]  # fmt: skip


@pytest.mark.parametrize("name", PIPELINE_CLASSES)
def test_pipeline_prunes_distilbert_exactly(name, tmp_path):
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    from optimum_snp import apply_plan, model_size_of

    from .conftest import masked_reference, random_plan
    from .text_utils import encode, sentences, word_tokenizer

    model = _stock(getattr(transformers, name))
    plan = random_plan(model, seed=2)
    pruned = apply_plan(model, plan)
    assert type(pruned).__name__ == "SNP" + name
    inputs = encode(word_tokenizer(tmp_path), sentences(3, seed=4))
    mask = inputs["attention_mask"].bool()

    def out(m):
        with torch.no_grad():
            o = m(**inputs)
        if getattr(o, "start_logits", None) is not None:
            return torch.stack([o.start_logits, o.end_logits], -1)[mask]
        t = o.logits if getattr(o, "logits", None) is not None else o.last_hidden_state
        return t[mask] if t.dim() == 3 else t

    torch.testing.assert_close(out(pruned), out(masked_reference(model, plan)), atol=1e-5, rtol=1e-4)
    for m in (model, pruned):
        size = model_size_of(m, sequence_length=20)
        assert size.params == sum(p.numel() for p in m.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(input_ids=torch.randint(5, 40, (1, 20)))
        assert size.macs == counter.get_total_flops() // 2


def test_prune_and_reload_distilbert(tmp_path):
    from transformers import AutoModelForSequenceClassification, DistilBertForSequenceClassification

    from optimum_snp import SNPConfig, SNPPruner

    from .text_utils import encode, sentences, text_dataset, word_tokenizer

    tokenizer = word_tokenizer(tmp_path)
    model = _stock(DistilBertForSequenceClassification)
    pruner = SNPPruner(model, tokenizer=tokenizer)
    config = SNPConfig(target_macs_ratio=0.6, num_calibration_samples=12, num_validation_samples=8, batch_size=4)
    pruned = pruner.prune(config, text_dataset(30), save_dir=tmp_path / "out")
    assert pruner.report["macs"]["ratio"] <= 0.6
    reloaded = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "out", attn_implementation=pruned.config._attn_implementation
    )
    inputs = encode(tokenizer, sentences(3, seed=5))
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, pruned(**inputs).logits)
