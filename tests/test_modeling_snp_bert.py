"""SNP BERT / RoBERTa / XLM-RoBERTa models: stock equivalence, per-layer dims, save/load and masking exactness."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
)

from optimum_snp.models.configuration_snp_bert import SNPBertConfig, SNPRobertaConfig, SNPXLMRobertaConfig
from optimum_snp.models.modeling_snp_bert import (
    SNPBertForMaskedLM,
    SNPBertForQuestionAnswering,
    SNPBertForSequenceClassification,
    SNPBertForTokenClassification,
    SNPBertModel,
    SNPRobertaForMaskedLM,
    SNPRobertaForQuestionAnswering,
    SNPRobertaForSequenceClassification,
    SNPRobertaForTokenClassification,
    SNPRobertaModel,
    SNPXLMRobertaForMaskedLM,
    SNPXLMRobertaForSequenceClassification,
)


TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    vocab_size=100,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.2,
    num_labels=3,
)
HEAD_DIM = TINY["hidden_size"] // TINY["num_attention_heads"]

FAMILIES = {
    "bert": (BertConfig, SNPBertConfig, "bert"),
    "roberta": (RobertaConfig, SNPRobertaConfig, "roberta"),
    "xlm-roberta": (XLMRobertaConfig, SNPXLMRobertaConfig, "roberta"),
}
# (family, head) -> (stock class, SNP class)
CLASSES = {
    ("bert", "base"): (BertModel, SNPBertModel),
    ("bert", "seq"): (BertForSequenceClassification, SNPBertForSequenceClassification),
    ("bert", "tok"): (BertForTokenClassification, SNPBertForTokenClassification),
    ("bert", "qa"): (BertForQuestionAnswering, SNPBertForQuestionAnswering),
    ("bert", "mlm"): (BertForMaskedLM, SNPBertForMaskedLM),
    ("roberta", "base"): (RobertaModel, SNPRobertaModel),
    ("roberta", "seq"): (RobertaForSequenceClassification, SNPRobertaForSequenceClassification),
    ("roberta", "tok"): (RobertaForTokenClassification, SNPRobertaForTokenClassification),
    ("roberta", "qa"): (RobertaForQuestionAnswering, SNPRobertaForQuestionAnswering),
    ("roberta", "mlm"): (RobertaForMaskedLM, SNPRobertaForMaskedLM),
    ("xlm-roberta", "seq"): (XLMRobertaForSequenceClassification, SNPXLMRobertaForSequenceClassification),
    ("xlm-roberta", "mlm"): (XLMRobertaForMaskedLM, SNPXLMRobertaForMaskedLM),
}
# per-layer dims: layer 0 and layer 1 differ in everything, with qk < v in one layer and qk > v in the other
PER_LAYER = dict(num_heads_per_layer=[3, 4], qk_head_dims=[5, 8], v_head_dims=[7, 3], intermediate_sizes=[20, 11])


def stock_config(family: str, head: str = "seq", **overrides):
    config = FAMILIES[family][0](**{**TINY, "num_labels": 2 if head == "qa" else TINY["num_labels"], **overrides})
    return config


def snp_config_from(config, attn: str = "eager", **fields):
    """The SNP config of a stock config (every field kept), with optional per-layer dims."""
    family = next(k for k, v in FAMILIES.items() if isinstance(config, v[0]))
    data = config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        data.pop(key, None)
    snp_config = FAMILIES[family][1].from_dict({**data, **fields})
    snp_config._attn_implementation = attn
    return snp_config


def noisy_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomizes LayerNorm weights and all biases (stock init sets them to 1 / 0, which could hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                noise = torch.randn(param.shape, generator=gen) * 0.2
                param.copy_(noise + (1.0 if name.endswith("weight") else 0.0))
    return model.eval()


def stock_model(family: str, head: str, attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    config = stock_config(family, head)
    config._attn_implementation = attn
    return noisy_(CLASSES[family, head][0](config), seed)


def batch(config, seed: int = 1):
    """Two sentences of lengths 9 and 5 (the second padded with the pad token), with two segments."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, config.vocab_size, (2, 9), generator=gen)
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = config.pad_token_id
    token_type_ids = torch.zeros(2, 9, dtype=torch.long)
    token_type_ids[:, 3:] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def labels_for(head: str, config, inputs) -> dict:
    gen = torch.Generator().manual_seed(2)
    if head == "seq":
        return dict(labels=torch.randint(0, config.num_labels, (2,), generator=gen))
    if head == "tok":
        labels = torch.randint(0, config.num_labels, (2, 9), generator=gen)
        return dict(labels=labels.masked_fill(inputs["attention_mask"] == 0, -100))
    if head == "qa":
        return dict(start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([4, 3]))
    if head == "mlm":
        labels = torch.randint(0, config.vocab_size, (2, 9), generator=gen)
        return dict(labels=labels.masked_fill(inputs["attention_mask"] == 0, -100))
    return {}


def outputs_of(model, inputs, **kwargs) -> dict[str, torch.Tensor]:
    """Every output tensor; token-level ones (batch, tokens, ...) restricted to the non-padded positions."""
    keep = inputs["attention_mask"].bool()
    out = model(**inputs, **kwargs)
    tensors = {}
    for key, value in out.items():
        values = value if isinstance(value, tuple) else (value,)
        for i, t in enumerate(values):
            name = f"{key}.{i}" if isinstance(value, tuple) else key
            if key == "attentions":  # (batch, heads, queries, keys): real queries; padded keys get weight 0
                tensors[name] = t.permute(0, 2, 1, 3)[keep]
            elif t.dim() >= 2 and t.shape[:2] == keep.shape:
                tensors[name] = t[keep]
            else:
                tensors[name] = t
    return tensors


def assert_close(a: dict, b: dict, atol: float = 1e-5):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        diff = (a[key] - b[key]).abs().max().item()
        assert diff <= atol, f"{key}: max abs diff {diff}"


# ---- stock equivalence -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family,head", list(CLASSES))
def test_unpruned_equals_stock(family, head, attn):
    stock = stock_model(family, head, attn)
    snp = CLASSES[family, head][1](snp_config_from(stock.config, attn)).eval()
    snp.load_state_dict(stock.state_dict(), strict=True)
    assert sorted(snp.state_dict()) == sorted(stock.state_dict())
    inputs = batch(stock.config)
    kwargs = dict(
        output_hidden_states=True, output_attentions=attn == "eager", **labels_for(head, stock.config, inputs)
    )
    with torch.no_grad():
        expected, got = outputs_of(stock, inputs, **kwargs), outputs_of(snp, inputs, **kwargs)
    assert_close(got, expected)
    if head != "base":
        assert "loss" in got
    if attn == "eager":
        assert any(k.startswith("attentions") for k in got)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_masked_lm_tied_to_word_embeddings(family):
    config = snp_config_from(stock_config(family, "mlm"), **PER_LAYER)
    model = CLASSES[family, "mlm"][1](config)
    base = getattr(model, FAMILIES[family][2])
    head = model.cls.predictions if family == "bert" else model.lm_head
    assert head.decoder.weight is base.embeddings.word_embeddings.weight
    assert head.decoder.bias is head.bias
    assert torch.equal(head.bias, torch.zeros(config.vocab_size))
    assert torch.equal(base.embeddings.position_ids[0], torch.arange(config.max_position_embeddings))
    assert model.get_output_embeddings() is head.decoder


# ---- per-layer dims --------------------------------------------------------------------------------------------


def test_config_per_layer_fields():
    config = snp_config_from(stock_config("bert"), **PER_LAYER)
    assert config.model_type == "snp_bert"
    assert config.num_heads_per_layer == [3, 4] and config.v_head_dims == [7, 3]
    assert config.original_head_dim == HEAD_DIM and config.attention_scaling() == HEAD_DIM**-0.5
    unpruned = snp_config_from(stock_config("roberta"))
    assert unpruned.model_type == "snp_roberta"
    assert unpruned.qk_head_dims == [HEAD_DIM] * 2 and unpruned.intermediate_sizes == [TINY["intermediate_size"]] * 2
    with pytest.raises(ValueError, match="one value per layer"):
        snp_config_from(stock_config("bert"), intermediate_sizes=[4, 4, 4])


@pytest.mark.parametrize("family,head", [("bert", "seq"), ("bert", "mlm"), ("roberta", "seq"), ("roberta", "tok")])
def test_per_layer_dims_eager_equals_sdpa_and_backward(family, head):
    torch.manual_seed(0)
    config = snp_config_from(stock_config(family, head), "eager", **PER_LAYER)
    eager = noisy_(CLASSES[family, head][1](config))
    layer0 = getattr(eager, FAMILIES[family][2]).encoder.layer[0]
    assert layer0.attention.self.query.weight.shape == (3 * 5, TINY["hidden_size"])
    assert layer0.attention.self.value.weight.shape == (3 * 7, TINY["hidden_size"])
    assert layer0.attention.output.dense.weight.shape == (TINY["hidden_size"], 3 * 7)
    assert layer0.output.dense.weight.shape == (TINY["hidden_size"], 20)
    sdpa = CLASSES[family, head][1](snp_config_from(stock_config(family, head), "sdpa", **PER_LAYER)).eval()
    sdpa.load_state_dict(eager.state_dict(), strict=True)
    inputs = batch(config)
    with torch.no_grad():
        assert_close(outputs_of(eager, inputs), outputs_of(sdpa, inputs))

    for model in (eager, sdpa):
        model.train()
        out = model(**inputs, **labels_for(head, config, inputs))
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
        assert grads[f"{FAMILIES[family][2]}.encoder.layer.1.attention.self.query.weight"].abs().sum() > 0


def test_padding_is_ignored():
    """A padded sentence gives the same outputs (on its real tokens) as the same sentence alone."""
    config = snp_config_from(stock_config("roberta"), "sdpa", **PER_LAYER)
    torch.manual_seed(0)
    model = noisy_(SNPRobertaForTokenClassification(config))
    inputs = batch(config)
    with torch.no_grad():
        padded = model(**inputs).logits[1, :5]
        alone = model(**{k: v[1:, :5] for k, v in inputs.items()}).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


# ---- save / load -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,head", [("bert", "mlm"), ("roberta", "seq"), ("xlm-roberta", "mlm")])
def test_save_load_round_trip(family, head, tmp_path):
    torch.manual_seed(0)
    config = snp_config_from(stock_config(family, head), "sdpa", **PER_LAYER)
    model = noisy_(CLASSES[family, head][1](config))
    inputs = batch(config)
    with torch.no_grad():
        before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = CLASSES[family, head][1].from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        after = loaded(**inputs).logits
    assert torch.equal(before, after)
    assert type(loaded.config) is FAMILIES[family][1]
    for name in PER_LAYER:
        assert getattr(loaded.config, name) == PER_LAYER[name]
    assert loaded.config.original_head_dim == HEAD_DIM
    if head == "mlm":
        head_module = loaded.cls.predictions if family == "bert" else loaded.lm_head
        assert head_module.decoder.weight is getattr(loaded, FAMILIES[family][2]).embeddings.word_embeddings.weight
    saved, reloaded = model.config.to_dict(), type(config).from_pretrained(tmp_path).to_dict()
    for data in (saved, reloaded):
        data.pop("_name_or_path", None)
    assert reloaded == saved


# ---- masking exactness -----------------------------------------------------------------------------------------

# per layer: kept heads, per kept head the kept query/key dims and value dims (same count per head), kept MLP units
PLAN = [
    dict(heads=[0, 2, 3], qk=[[0, 2, 5], [1, 3, 7], [4, 5, 6]], v=[[1], [0], [7]], mlp=[0, 3, 4, 9, 20, 36]),
    dict(heads=[1], qk=[[0, 1, 2, 3, 4, 5, 6]], v=[[0, 2, 3, 4, 5, 6, 7]], mlp=[5]),
]


def qk_rows(plan) -> list[int]:
    return [h * HEAD_DIM + d for h, dims in zip(plan["heads"], plan["qk"], strict=True) for d in dims]


def v_rows(plan) -> list[int]:
    return [h * HEAD_DIM + d for h, dims in zip(plan["heads"], plan["v"], strict=True) for d in dims]


def sliced_state_dict(state: dict, prefix: str, plans: list[dict]) -> dict:
    """The stock state dict with the removed rows / columns cut out."""
    state = dict(state)
    for i, plan in enumerate(plans):
        layer = f"{prefix}.encoder.layer.{i}"
        cuts = [
            (f"{layer}.attention.self.query", qk_rows(plan), 0),
            (f"{layer}.attention.self.key", qk_rows(plan), 0),
            (f"{layer}.attention.self.value", v_rows(plan), 0),
            (f"{layer}.attention.output.dense", v_rows(plan), 1),
            (f"{layer}.intermediate.dense", plan["mlp"], 0),
            (f"{layer}.output.dense", plan["mlp"], 1),
        ]
        for module, rows, axis in cuts:
            index = torch.tensor(rows)
            state[f"{module}.weight"] = state[f"{module}.weight"].index_select(axis, index).clone()
            if axis == 0:
                state[f"{module}.bias"] = state[f"{module}.bias"].index_select(0, index).clone()
    return state


def masked_stock(model, prefix: str, plans: list[dict]):
    """The stock model whose removed units are zeroed out: removed heads and value dims get zero value rows + biases
    (zero values give zero head outputs), removed query/key dims zero query rows + biases (nothing added to the
    scores), removed MLP units zero intermediate rows + biases (GELU(0) = 0). The scale stays head_dim ** -0.5."""
    model = copy.deepcopy(model)
    params = dict(model.named_parameters())
    all_rows = set(range(TINY["num_attention_heads"] * HEAD_DIM))
    with torch.no_grad():
        for i, plan in enumerate(plans):
            layer = f"{prefix}.encoder.layer.{i}"
            cuts = [
                ("attention.self.query", all_rows - set(qk_rows(plan))),
                ("attention.self.value", all_rows - set(v_rows(plan))),
                ("intermediate.dense", set(range(TINY["intermediate_size"])) - set(plan["mlp"])),
            ]
            for module, rows in cuts:
                index = torch.tensor(sorted(rows), dtype=torch.long)
                params[f"{layer}.{module}.weight"][index] = 0
                params[f"{layer}.{module}.bias"][index] = 0
    return model


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family,head", [("bert", "seq"), ("bert", "mlm"), ("roberta", "tok"), ("roberta", "qa")])
def test_pruned_equals_masked_stock(family, head, attn):
    stock = stock_model(family, head, attn)
    prefix = FAMILIES[family][2]
    dims = dict(
        num_heads_per_layer=[len(p["heads"]) for p in PLAN],
        qk_head_dims=[len(p["qk"][0]) for p in PLAN],
        v_head_dims=[len(p["v"][0]) for p in PLAN],
        intermediate_sizes=[len(p["mlp"]) for p in PLAN],
    )
    snp = CLASSES[family, head][1](snp_config_from(stock.config, attn, **dims)).eval()
    assert snp.config.original_head_dim == HEAD_DIM
    snp.load_state_dict(sliced_state_dict(stock.state_dict(), prefix, PLAN), strict=True)
    reference = masked_stock(stock, prefix, PLAN)
    inputs = batch(stock.config)
    with torch.no_grad():
        expected, got = outputs_of(reference, inputs), outputs_of(snp, inputs)
        unmasked = outputs_of(stock, inputs)
    assert_close(got, expected)
    key = next(iter(got))
    assert (got[key] - unmasked[key]).abs().max() > 1e-3  # the pruning does change the model
