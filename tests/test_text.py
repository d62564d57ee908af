"""BERT-family text encoders through the whole pipeline: exactness with padding, padding-free statistics, text
calibration, sizes, save/load, pipelines, ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
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
)

from optimum_snp import SNPConfig, SNPPruner, apply_plan, get_adapter, model_size_of
from optimum_snp.calibration import split_batches, text_calibration_batches
from optimum_snp.reconstruction import reconstruct
from optimum_snp.scoring.snp import snp_scores

from .conftest import masked_reference, random_plan
from .text_utils import encode, sentences, text_dataset, tiny_text_model, word_tokenizer


CLASSES = {
    "bert": (BertConfig, [BertModel, BertForSequenceClassification, BertForTokenClassification,
                          BertForQuestionAnswering, BertForMaskedLM]),
    "roberta": (RobertaConfig, [RobertaModel, RobertaForSequenceClassification, RobertaForTokenClassification,
                                RobertaForQuestionAnswering, RobertaForMaskedLM]),
}  # fmt: skip
CASES = [(family, cls) for family, (_, classes) in CLASSES.items() for cls in classes]


def _model(family, cls, **kwargs):
    config_cls = CLASSES[family][0]
    labels = {"num_labels": 2} if cls.__name__.endswith("QuestionAnswering") else {}
    return tiny_text_model(cls, config_cls, **labels, **kwargs)


def _outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    if getattr(out, "start_logits", None) is not None:
        return torch.stack([out.start_logits, out.end_logits], -1)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.fixture
def tokenizer(tmp_path):
    return word_tokenizer(tmp_path)


@pytest.mark.parametrize("family, cls", CASES, ids=[f"{f}-{c.__name__}" for f, c in CASES])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pruned_equals_masked_original_with_padding(family, cls, attn, tokenizer):
    model = _model(family, cls, attn=attn)
    plan = random_plan(model, seed=3)
    pruned = apply_plan(model, plan)
    assert type(pruned).__name__ == "SNP" + cls.__name__
    inputs = encode(tokenizer, sentences(3, seed=5))
    assert not bool(inputs["attention_mask"].all())  # really padded
    mask = inputs["attention_mask"].bool()
    expected, got = _outputs(masked_reference(model, plan), inputs), _outputs(pruned, inputs)
    if expected.dim() == 3 and not cls.__name__.endswith("QuestionAnswering"):
        expected, got = expected[mask], got[mask]
    elif cls.__name__.endswith("QuestionAnswering"):
        expected, got = expected[mask], got[mask]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, _outputs(model, inputs)[mask] if got.dim() == 2 and expected.shape[0] == mask.sum()
                              else _outputs(model, inputs), atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("family, cls", CASES, ids=[f"{f}-{c.__name__}" for f, c in CASES])
def test_size_matches_parameters_and_flop_counter(family, cls, tokenizer):
    model = _model(family, cls)
    pruned = apply_plan(model, random_plan(model, seed=4))
    for m in (model, pruned):
        ids = torch.randint(5, m.config.vocab_size, (1, 20))
        size = model_size_of(m, sequence_length=20)
        assert size.params == sum(p.numel() for p in m.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(input_ids=ids)
        assert size.macs == counter.get_total_flops() // 2, type(m).__name__


@pytest.mark.parametrize("qk", ["attention_kl", "attention_output"])
def test_padded_batch_scores_equal_one_by_one(tokenizer, qk):
    model = _model("bert", BertForSequenceClassification)
    texts = sentences(4, seed=7)
    padded = [encode(tokenizer, texts)]
    single = [encode(tokenizer, [t]) for t in texts]
    criteria = {"qk": qk, "v": "redundancy", "mlp": "contribution", "hidden": "magnitude",
                "heads": "contribution"}  # fmt: skip
    a, b = snp_scores(model, padded, criteria, show_progress=False), snp_scores(model, single, criteria,
                                                                                show_progress=False)  # fmt: skip
    for la, lb in zip(a.layers, b.layers, strict=True):
        for group in ("qk", "v", "mlp", "heads"):
            torch.testing.assert_close(getattr(la, group), getattr(lb, group), atol=1e-5, rtol=1e-4)


def test_padded_batch_refit_equals_one_by_one(tokenizer):
    model = _model("bert", BertModel)
    plan = random_plan(model, seed=9)
    texts = sentences(6, seed=8)
    fits, reports = [], []
    for batches in ([encode(tokenizer, texts)], [encode(tokenizer, [t]) for t in texts]):
        pruned = apply_plan(model, plan)
        # a fixed ridge: the text default cross-validates over batches, which one padded batch does not have
        reports.append(reconstruct(model, pruned, plan, batches, ridge=0.3, show_progress=False))
        fits.append(pruned)
    for padded, single in zip(reports[0]["layers"], reports[1]["layers"], strict=True):
        for key in ("o_proj", "fc2"):
            assert padded[key]["rows"] == single[key]["rows"] < sum(len(t.split()) + 2 for t in texts) + 1
            assert padded[key]["mse_after"] == pytest.approx(single[key]["mse_after"], rel=1e-4)
    inputs = encode(tokenizer, sentences(3, seed=13))
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(_outputs(fits[0], inputs)[mask], _outputs(fits[1], inputs)[mask], atol=1e-3, rtol=1e-2)


def test_text_calibration_pads_per_batch_and_streams_names(tokenizer, monkeypatch):
    data = text_dataset(10)
    batches = text_calibration_batches(data, tokenizer, num_samples=7, batch_size=3, max_length=8,
                                       show_progress=False)  # fmt: skip
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 1]
    assert all(b["input_ids"].shape[1] <= 8 for b in batches)
    assert all(b["input_ids"].shape == b["attention_mask"].shape for b in batches)
    pairs = text_calibration_batches(text_dataset(10, pairs=True), tokenizer, num_samples=4, batch_size=4,
                                     text_pair_column="other", show_progress=False)  # fmt: skip
    assert (pairs[0]["token_type_ids"] == 1).any()  # the second text of each pair
    head, tail = split_batches(batches, 4)
    assert [len(b["input_ids"]) for b in head] == [3, 1] and [len(b["input_ids"]) for b in tail] == [2, 1]
    seen = {}

    def fake_load_dataset(name, **kwargs):
        seen.update(kwargs)
        return text_dataset(5).to_iterable_dataset()

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    streamed = text_calibration_batches("some/hub-dataset", tokenizer, num_samples=4, batch_size=2,
                                        show_progress=False)  # fmt: skip
    assert seen["streaming"] is True and sum(len(b["input_ids"]) for b in streamed) == 4
    with pytest.raises(ValueError, match="text_column='nope' is not a column"):
        text_calibration_batches(data, tokenizer, text_column="nope", show_progress=False)


@pytest.mark.parametrize("family, cls", [("bert", BertForSequenceClassification), ("roberta", RobertaModel)])
def test_prune_save_and_load_text_model(family, cls, tokenizer, tmp_path):
    model = _model(family, cls)
    model.name_or_path = ""
    pruner = SNPPruner(model, tokenizer=tokenizer)
    config = SNPConfig(target_macs_ratio=0.6, num_calibration_samples=12, num_validation_samples=8, batch_size=4)
    out = tmp_path / "pruned-text"
    pruned = pruner.prune(config, text_dataset(30), save_dir=out)
    assert pruner.report["macs"]["ratio"] <= 0.6 and pruner.report["allocation"]["num_validation_samples"] == 8
    assert (out / "tokenizer_config.json").exists() and (out / "config.json").exists()
    card = (out / "README.md").read_text()
    assert "# pruned-text" in card and ".snp-tmp" not in card
    auto = AutoModelForSequenceClassification if cls.__name__.endswith("Classification") else AutoModel
    reloaded = auto.from_pretrained(out, attn_implementation=pruned.config._attn_implementation)
    inputs = encode(tokenizer, sentences(3, seed=11))
    assert torch.equal(_outputs(reloaded, inputs), _outputs(pruned, inputs))


def test_hidden_pruning_of_a_text_model_is_refused(tokenizer):
    model = _model("bert", BertModel)
    with pytest.raises(ValueError, match="keeps its hidden channels.*hidden_ratio=0"):
        SNPPruner(model, tokenizer=tokenizer).prune(SNPConfig(hidden_ratio=0.25, criterion="magnitude",
                                                              reconstruct="none"))  # fmt: skip


def test_text_model_without_tokenizer_gets_a_clear_error():
    with pytest.raises(ValueError, match="is a text model: pass its tokenizer"):
        SNPPruner(_model("bert", BertModel))


def test_pipelines_run_on_a_pruned_folder(tokenizer, tmp_path):
    from transformers import pipeline

    model = _model("bert", BertForSequenceClassification)
    pruned = apply_plan(model, random_plan(model, seed=1))
    pruned.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    classify = pipeline("text-classification", model=str(tmp_path / "m"))
    assert len(classify(["the cat sat on the mat", "a dog"])) == 2
    features = pipeline("feature-extraction", model=str(tmp_path / "m"))
    assert len(features("the cat sat")[0][0]) == 32  # hidden size kept


def test_onnx_export_with_dynamic_batch_and_sequence(tokenizer, tmp_path):
    pytest.importorskip("onnxruntime")
    from optimum_snp.exporters import export_onnx, onnx_session, run_onnx

    model = _model("bert", BertForSequenceClassification)
    pruned = apply_plan(model, random_plan(model, seed=2))
    result = export_onnx(pruned, tmp_path / "onnx")
    assert result.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    session = onnx_session(tmp_path / "onnx")
    inputs = encode(tokenizer, sentences(5, seed=12))
    got = run_onnx(session, inputs)["logits"]
    torch.testing.assert_close(torch.from_numpy(got), _outputs(pruned, inputs), atol=1e-4, rtol=1e-4)


def test_adapter_is_the_only_architecture_knowledge():
    """The generic steps reach BERT's modules through the adapter's canonical keys."""
    model = _model("bert", BertForMaskedLM)
    adapter = get_adapter(model)
    mods = adapter.layer_modules(0)
    assert mods["q_proj"] is model.bert.encoder.layer[0].attention.self.query
    assert mods["fc2"] is model.bert.encoder.layer[0].output.dense
    assert adapter.pipeline_tag("SNPBertForMaskedLM") == "fill-mask"
    assert adapter.residual_output_targets == ()  # post-LayerNorm: the refit reruns the layer
    copy.deepcopy(adapter.layer_groups(0))


_REMOTE = """
import sys
sys.modules["optimum_snp"] = None  # `import optimum_snp` now raises ImportError
import torch
from transformers import AutoModelForMaskedLM
model = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True, attn_implementation="eager").eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(**inputs).logits, sys.argv[3])
print(type(model).__name__)
"""


def test_trust_remote_code_without_the_package(tokenizer, tmp_path):
    import os
    import subprocess
    import sys

    model = _model("roberta", RobertaForMaskedLM)
    pruned = apply_plan(model, random_plan(model, seed=6))
    pruned.save_pretrained(tmp_path / "m")
    inputs = encode(tokenizer, sentences(3, seed=14))
    torch.save(inputs, tmp_path / "x.pt")
    (tmp_path / "load.py").write_text(_REMOTE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "load.py", str(tmp_path / "m"), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("SNPRobertaForMaskedLM")
    assert torch.equal(torch.load(tmp_path / "out.pt"), _outputs(pruned, inputs))


def test_cli_prunes_a_text_model(tokenizer, tmp_path, capsys):
    from optimum_snp.cli import main

    model = _model("bert", BertForSequenceClassification)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    text_dataset(40).save_to_disk(str(tmp_path / "data"))
    argv = ["--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "data"), "--text-column", "sentence",
            "--num-samples", "16", "--target-macs-ratio", "0.6", "--output-dir", str(tmp_path / "out"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "reloads with AutoModelForSequenceClassification  yes" in printed
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
    assert main([*argv[:-3], "--output-dir", str(tmp_path / "o2"), "--eval-split", "train"]) == 2
    assert "measure top-1 on images" in capsys.readouterr().err


def test_a_sentence_transformers_folder_stays_one(tokenizer, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    model = _model("bert", BertModel)
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    try:  # sentence-transformers 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # 3-5
        from sentence_transformers.models import Pooling, Transformer
    encoder = st.SentenceTransformer(modules=[Transformer(str(tmp_path / "hf")), Pooling(32, pooling_mode="mean")])
    encoder.save(str(tmp_path / "st"))
    pruner = SNPPruner.from_pretrained(tmp_path / "st")
    pruned = pruner.prune(SNPConfig(target_macs_ratio=0.6, num_calibration_samples=16, num_validation_samples=8),
                          text_dataset(30), save_dir=tmp_path / "out")  # fmt: skip
    assert (tmp_path / "out" / "modules.json").exists() and (tmp_path / "out" / "1_Pooling" / "config.json").exists()
    loaded = st.SentenceTransformer(str(tmp_path / "out"), trust_remote_code=True, device="cpu")
    texts = sentences(4, seed=15)
    got = torch.as_tensor(loaded.encode(texts, convert_to_numpy=True))
    inputs = encode(tokenizer, texts)
    with torch.no_grad():
        hidden = pruned(**inputs).last_hidden_state
    mask = inputs["attention_mask"][..., None].float()
    torch.testing.assert_close(got, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-4)


def _distillation_setup(head: str, tokenizer, num_texts: int, **config):
    """(teacher, randomly pruned student in train mode, tokenized dataset) for a BERT classifier or base model."""
    cls = BertForSequenceClassification if head == "classification" else BertModel
    teacher = _model("bert", cls, **config)
    student = apply_plan(teacher, random_plan(teacher, seed=7)).train()
    columns = ["sentence", "label"] if head == "classification" else ["sentence"]
    data = (
        text_dataset(num_texts)
        .select_columns(columns)
        .map(lambda b: tokenizer(b["sentence"]), batched=True, remove_columns=["sentence"])
    )
    if head == "classification":
        data = data.rename_column("label", "labels")
    return teacher, student, data


@pytest.mark.parametrize("head", ["classification", "embeddings"])
def test_distillation_trainer_fine_tunes_text_models(head, tokenizer, tmp_path):
    from transformers import DataCollatorWithPadding

    from optimum_snp import SNPDistillationTrainer, SNPTrainingArguments

    teacher, student, data = _distillation_setup(head, tokenizer, 24)
    args = SNPTrainingArguments(str(tmp_path / "run"), num_train_epochs=2, per_device_train_batch_size=8,
                                learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=1,
                                disable_tqdm=True)  # fmt: skip
    trainer = SNPDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data,
                                     data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    losses = []
    trainer.add_callback(type("Log", (__import__("transformers").TrainerCallback,), {
        "on_log": lambda self, a, s, c, logs=None, **k: losses.append(logs["loss"]) if logs and "loss" in logs else None
    })())  # fmt: skip
    trainer.train()
    assert len(losses) == 6 and sum(losses[3:]) < sum(losses[:3])  # the second epoch fits better than the first


@pytest.mark.parametrize(
    "head, setting, during",
    [
        ("embeddings", "auto", 0.0),
        ("classification", "auto", 0.1),
        ("embeddings", "keep", 0.1),
        ("classification", 0.3, 0.3),
    ],
)
def test_student_dropout_while_training(head, setting, during, tokenizer, tmp_path):
    """student_dropout='auto' trains a feature-extraction student without dropout (embedding distillation) and keeps
    a task student's own; every dropout of the student (attention included) has that value during training only."""
    from transformers import DataCollatorWithPadding

    from optimum_snp import SNPDistillationTrainer, SNPTrainingArguments

    teacher, student, data = _distillation_setup(
        head, tokenizer, 8, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    args = SNPTrainingArguments(str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, report_to=[],
                                save_strategy="no", disable_tqdm=True, student_dropout=setting)  # fmt: skip
    trainer = SNPDistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data,
                                     data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    dropouts = [m for m in student.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) > 4 and {m.p for m in dropouts} == {0.1}
    seen = []
    student.register_forward_pre_hook(lambda module, args: seen.append({m.p for m in dropouts}))
    trainer.train()
    assert seen and all(values == {during} for values in seen)
    assert {m.p for m in dropouts} == {0.1}  # restored
    with pytest.raises(ValueError, match="student_dropout"):
        SNPTrainingArguments(str(tmp_path / "bad"), report_to=[], student_dropout=1.0)


def test_student_dropout_applies_to_students_built_by_model_init(tokenizer, tmp_path):
    """With `model_init` (hyperparameter search) train() builds a new student; its dropout is set too, and restored."""
    from transformers import DataCollatorWithPadding

    from optimum_snp import SNPDistillationTrainer, SNPTrainingArguments

    teacher, _, data = _distillation_setup("embeddings", tokenizer, 8, hidden_dropout_prob=0.1)
    built, seen = [], []

    def model_init():
        student = apply_plan(teacher, random_plan(teacher, seed=7)).train()
        dropouts = [m for m in student.modules() if isinstance(m, torch.nn.Dropout)]
        student.register_forward_pre_hook(lambda module, args: seen.append((student, {m.p for m in dropouts})))
        built.append((student, dropouts))
        return student

    args = SNPTrainingArguments(str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, report_to=[],
                                save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = SNPDistillationTrainer(model_init=model_init, teacher=teacher, args=args, train_dataset=data,
                                     data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    trained, dropouts = built[-1]
    assert len(built) == 2 and trainer.model is trained  # one student at construction, a new one in train()
    assert [values for model, values in seen if model is trained] == [{0.0}, {0.0}]  # 'auto': no dropout
    assert {m.p for m in dropouts} == {0.1}  # restored


def test_text_models_calibrate_on_1024_texts_by_default(tokenizer):
    assert SNPConfig().num_calibration_samples is None  # the architecture decides
    pruner = SNPPruner(_model("bert", BertModel), tokenizer=tokenizer)
    with pytest.warns(UserWarning, match="fewer than num_calibration_samples=1024"):
        pruner.prune(SNPConfig(qk_ratio=0.5, criterion="magnitude"), text_dataset(20), show_progress=False)
    assert pruner.report["num_calibration_samples"] == 20


@pytest.mark.parametrize(
    "task, cls",
    [
        ("token-classification", BertForTokenClassification),
        ("fill-mask", BertForMaskedLM),  # transformers 5 removed the question-answering pipeline
    ],
)
def test_task_pipelines_run_on_a_pruned_folder(task, cls, tokenizer, tmp_path):
    from transformers import pipeline

    model = _model("bert", cls)
    pruned = apply_plan(model, random_plan(model, seed=5))
    pruned.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    run = pipeline(task, model=str(tmp_path / "m"))
    if task == "fill-mask":
        assert len(run("the cat sat on the [MASK]")) == 5  # top-5 completions from the tied decoder
    else:
        assert isinstance(run("the cat sat on the mat"), list)


@pytest.mark.parametrize("loss", ["pooled", "pooled+tokens", "pooled+layers"])
def test_embedding_distillation_loss(loss, tokenizer, tmp_path):
    import torch.nn.functional as F

    from optimum_snp import SNPDistillationTrainer, SNPTrainingArguments

    teacher = _model("bert", BertModel)
    student = apply_plan(teacher, random_plan(teacher, seed=7))
    args = SNPTrainingArguments(str(tmp_path / "run"), report_to=[], embedding_loss=loss)
    trainer = SNPDistillationTrainer(model=student, teacher=teacher, args=args)
    inputs = encode(tokenizer, sentences(5, seed=4))  # padded: different lengths
    got = trainer.compute_loss(student, dict(inputs))
    # the same from the definition: mean-pooled over real tokens (and per real token) 1 - cosine
    with torch.no_grad():
        t_out, s_out = teacher(**inputs, output_hidden_states=True), student(**inputs, output_hidden_states=True)
    t, s = t_out.last_hidden_state, s_out.last_hidden_state
    mask = inputs["attention_mask"].bool()
    pooled = lambda h: torch.stack([h[i][mask[i]].mean(0) for i in range(len(h))])  # noqa: E731
    tokens = lambda a, b: (1 - F.cosine_similarity(a[mask], b[mask], dim=-1)).mean()  # noqa: E731
    want = (1 - F.cosine_similarity(pooled(s), pooled(t), dim=-1)).mean()
    if loss == "pooled+tokens":
        want = want + tokens(s, t)
    if loss == "pooled+layers":  # every layer's output (not the embeddings'), the last one included
        layers = list(zip(s_out.hidden_states[1:], t_out.hidden_states[1:], strict=True))
        assert len(layers) == teacher.config.num_hidden_layers
        want = want + sum(tokens(a, b) for a, b in layers) / len(layers)
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    assert float(trainer.compute_loss(teacher, dict(inputs))) == pytest.approx(0.0, abs=1e-5)  # student = teacher
    with pytest.raises(ValueError, match="embedding_loss"):
        SNPTrainingArguments(str(tmp_path / "bad"), report_to=[], embedding_loss="tokens")


def test_layer_loss_asks_only_headless_models_for_hidden_states(tokenizer, tmp_path, monkeypatch):
    """embedding_loss='pooled+layers' concerns feature-extraction models; a classification student is distilled on
    its logits, and neither it nor its teacher is asked for every layer's output."""
    from transformers import BertForSequenceClassification

    from optimum_snp import SNPDistillationTrainer, SNPTrainingArguments

    teacher = _model("bert", BertForSequenceClassification)
    student = apply_plan(teacher, random_plan(teacher, seed=7))
    inputs = {**encode(tokenizer, sentences(4, seed=4)), "labels": torch.tensor([0, 1, 2, 0])}
    asked = []
    for model in (teacher, student):
        forward = model.forward
        monkeypatch.setattr(model, "forward", lambda *a, _f=forward, **kw: asked.append(kw) or _f(*a, **kw))
    losses = {}
    for loss in ("pooled", "pooled+layers"):
        args = SNPTrainingArguments(str(tmp_path / loss), report_to=[], embedding_loss=loss)
        trainer = SNPDistillationTrainer(model=student, teacher=teacher, args=args)
        losses[loss] = float(trainer.compute_loss(student, dict(inputs)))
    assert len(asked) == 4 and not any(kw.get("output_hidden_states") for kw in asked)
    assert losses["pooled"] == losses["pooled+layers"]


def test_pooled_divergence_of_base_models_ignores_padding(tokenizer):
    import torch.nn.functional as F

    from optimum_snp.validation import _output_rows
    from optimum_snp.validation import divergence as _divergence

    model = _model("bert", BertModel)
    pruned = apply_plan(model, random_plan(model, seed=7))
    texts = sentences(5, seed=2)
    padded = encode(tokenizer, texts)
    with torch.no_grad():
        ref = _output_rows(model(**padded), padded["attention_mask"].bool(), pooled=True)
        out = _output_rows(pruned(**padded), padded["attention_mask"].bool(), pooled=True)
        singles = [encode(tokenizer, [t]) for t in texts]
        one_by_one = [model(**s).last_hidden_state[0].mean(0) for s in singles]
    assert ref[1] == "pooled" and ref[0][0].shape == (5, model.config.hidden_size)
    torch.testing.assert_close(ref[0][0], torch.stack(one_by_one), atol=1e-5, rtol=1e-4)
    want = float((1 - F.cosine_similarity(ref[0][0], out[0][0], dim=-1)).mean())
    assert _divergence(ref, out, list(range(model.config.hidden_size))) == pytest.approx(want)
    assert _divergence(ref, ref, list(range(model.config.hidden_size))) == pytest.approx(0.0, abs=1e-6)
    # the pairwise variant reads the same pooled rows: padding-free, and zero against itself
    mask = padded["attention_mask"].bool()
    with torch.no_grad():
        ref_p = _output_rows(model(**padded), mask, pooled="pairwise")
        out_p = _output_rows(pruned(**padded), mask, pooled="pairwise")
    assert ref_p[1] == "pairwise"
    torch.testing.assert_close(ref_p[0][0], ref[0][0])
    sims = lambda e: F.normalize(e.double(), dim=-1) @ F.normalize(e.double(), dim=-1).T  # noqa: E731
    want = float((sims(ref[0][0]) - sims(out[0][0])).square().sum() / (5 * 4))
    assert _divergence(ref_p, out_p, list(range(model.config.hidden_size))) == pytest.approx(want, rel=1e-6)
    assert _divergence(ref_p, ref_p, list(range(model.config.hidden_size))) == pytest.approx(0.0, abs=1e-12)


def test_text_encoders_keep_snp_activation_criteria_by_default(tokenizer):
    """criterion='snp' resolves per architecture: text encoders keep SNP's activation contribution for value dims and
    MLP units (chosen on MiniLM), where ViT/DeiT take weight magnitude."""
    pruner = SNPPruner(_model("bert", BertModel), tokenizer=tokenizer)
    config = SNPConfig(v_ratio=0.25, mlp_ratio=0.5, reconstruct="none", num_calibration_samples=8)
    pruner.prune(config, text_dataset(8), show_progress=False)
    assert pruner.report["criteria"]["v"] == pruner.report["criteria"]["mlp"] == "contribution"
