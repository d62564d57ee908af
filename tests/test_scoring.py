"""The SNP criteria compute what SNP_METHOD section 3 says they compute."""

import pytest
import torch

from optimum_snp.config import CRITERIA, SNPConfig
from optimum_snp.plan import greedy_redundancy_keep
from optimum_snp.scoring.snp import (
    attention_change_scores,
    attention_kl_gram,
    attention_output_gram,
    greedy_removal_scores,
    snp_scores,
    svd_share_scores,
)

from .conftest import pixel_values, tiny_model


def _qk(seed=0, heads=2, tokens=7, dim=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(heads, tokens, dim, generator=g, dtype=torch.float64), torch.randn(
        heads, tokens, dim, generator=g, dtype=torch.float64
    )


def test_attention_change_matches_explicit_jacobian():
    q, k = _qk()
    s = 0.4
    scores = attention_change_scores(q, k, s)
    probs = (s * q @ k.transpose(-1, -2)).softmax(-1)
    for h in range(q.shape[0]):
        for i in range(q.shape[-1]):
            d_logits = -s * torch.outer(q[h, :, i], k[h, :, i])  # removing pair i
            d_probs = probs[h] * (d_logits - (probs[h] * d_logits).sum(-1, keepdim=True))
            assert scores[h, i].item() == pytest.approx(d_probs.pow(2).sum().item(), rel=1e-9)


def test_attention_change_is_first_order_change_of_softmax():
    q, k = _qk(1)
    s = 1e-3  # tiny logits: removing a pair is a small perturbation, the linearization is accurate
    scores = attention_change_scores(q, k, s)
    probs = (s * q @ k.transpose(-1, -2)).softmax(-1)
    for i in range(q.shape[-1]):
        q2, k2 = q.clone(), k.clone()
        q2[..., i], k2[..., i] = 0, 0
        actual = ((s * q2 @ k2.transpose(-1, -2)).softmax(-1) - probs).pow(2).sum((-1, -2))
        assert torch.allclose(scores[:, i], actual, rtol=1e-2)


def test_svd_shares_sum_to_singular_values():
    q, k = _qk(2, tokens=9, dim=6)
    s = 0.3
    logits = s * q @ k.transpose(-1, -2)
    u, sigma, vh = torch.linalg.svd(logits)
    for j in range(3):
        c_j = s * (u[..., :, j : j + 1].transpose(-1, -2) @ q) * (vh[..., j : j + 1, :] @ k)  # (H, 1, d)
        assert torch.allclose(c_j.sum(-1).squeeze(-1), sigma[:, j])
    # rank r scores = sum over the top r of |c_ij|
    full = svd_share_scores(q, k, s, rank=6)
    top1 = svd_share_scores(q, k, s, rank=1)
    assert (full >= top1 - 1e-12).all() and not torch.allclose(full, top1)


def test_centered_svd_ignores_per_row_constants():
    q, k = _qk(3)
    # adding a constant to a key filter adds a per-row constant to the logits, which softmax ignores
    k_shifted = k.clone()
    k_shifted[..., 0] += 5.0
    assert torch.allclose(svd_share_scores(q, k, 0.3, 3, centered=True), svd_share_scores(q, k_shifted, 0.3, 3, True))
    assert not torch.allclose(svd_share_scores(q, k, 0.3, 3), svd_share_scores(q, k_shifted, 0.3, 3))
    assert torch.allclose(attention_change_scores(q, k, 0.3), attention_change_scores(q, k_shifted, 0.3))


def test_greedy_redundancy_updates_after_removal():
    # heads 0 and 1, 2 filters each; filter (0,0) and (1,0) are twins (cos 1), the others are unique
    cos = torch.eye(4)
    cos[0, 2] = cos[2, 0] = 1.0
    contribution = torch.tensor([[1.0, 1.0], [1.2, 1.0]])
    keep = greedy_redundancy_keep(contribution, cos, heads=[0, 1], keep=1)
    # (0,0) is removed first (redundant, lowest contribution); its twin (1,0) is then no longer redundant
    assert keep == [[1], [0]]
    # without the update, (1,0) would also look redundant and be removed
    rho = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    static = (contribution * (1 - rho)).argsort(dim=1, descending=True)[:, :1].tolist()
    assert static == [[1], [1]]


@pytest.mark.parametrize("group", ["qk", "v", "mlp", "hidden", "heads"])
def test_every_criterion_runs_and_is_deterministic(group):
    model = tiny_model("deit-teacher")
    batches = [pixel_values(4, seed=s) for s in range(2)]
    for name in CRITERIA[group]:
        criteria = SNPConfig(criterion={group: name}).criterion_per_group()
        a = snp_scores(model, batches, criteria, qk_rank=2, show_progress=False)
        b = snp_scores(model, batches, criteria, qk_rank=2, show_progress=False)
        values = getattr(a, group) if group == "hidden" else torch.stack([getattr(layer, group) for layer in a.layers])
        other = getattr(b, group) if group == "hidden" else torch.stack([getattr(layer, group) for layer in b.layers])
        assert torch.isfinite(values).all() and torch.equal(values, other), name


def test_statistics_do_not_depend_on_batching():
    model = tiny_model("vit")
    x = pixel_values(8, seed=4)
    criteria = SNPConfig().criterion_per_group()
    one = snp_scores(model, [x], criteria, show_progress=False)
    many = snp_scores(model, list(x.split(3)), criteria, show_progress=False)
    for a, b in zip(one.layers, many.layers, strict=True):
        for name in ("qk", "v", "mlp", "heads"):
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-4)
    assert torch.allclose(one.hidden, many.hidden, rtol=1e-4)


def test_non_finite_activations_are_reported():
    model = tiny_model("vit")
    with torch.no_grad():
        model.vit.layers[1].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Non-finite activations .* layer 1 MLP"):
        snp_scores(model, [pixel_values(2)], SNPConfig().criterion_per_group(), show_progress=False)


def test_greedy_removal_scores_follow_the_greedy_order():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 9, 6, generator=g, dtype=torch.float64)
    gram = a.transpose(-1, -2) @ a
    scores = greedy_removal_scores(gram)
    for h in range(2):
        order = torch.argsort(scores[h]).tolist()
        removed = []
        for victim in order:  # each unit in sort order is the one the greedy step removes
            increase = [
                (gram[h, i, i] + 2 * sum(gram[h, i, j] for j in removed)).item() if i not in removed else float("inf")
                for i in range(6)
            ]
            assert increase[victim] == pytest.approx(min(increase), abs=1e-9)
            removed.append(victim)
        assert (scores[h].diff() != 0).all() or len(set(scores[h].tolist())) == 6  # a strict order: no ties


def test_logits_criterion_error_is_exact_for_any_removed_set():
    q, k = _qk(2)
    s = 0.5
    kc = k - k.mean(-2, keepdim=True)
    gram = (s**2) * (q.transpose(-1, -2) @ q) * (kc.transpose(-1, -2) @ kc)
    removed = [0, 3]
    logits = s * q @ k.transpose(-1, -2)
    kept_logits = s * q[..., [1, 2, 4]] @ k[..., [1, 2, 4]].transpose(-1, -2)
    change = logits - kept_logits
    change = change - change.mean(-1, keepdim=True)  # softmax ignores a per-row constant
    ones = torch.zeros(5, dtype=torch.float64)
    ones[removed] = 1
    assert (ones @ gram @ ones).sum().item() == pytest.approx(change.pow(2).sum().item(), rel=1e-9)


def test_iterative_attention_criterion_orders_by_removal_pass():
    model = tiny_model("vit", seed=2)
    criteria = {"qk": "attention_iterative", "v": "contribution", "mlp": "contribution", "hidden": "magnitude"}
    criteria["heads"] = "magnitude"
    scores = snp_scores(model, [pixel_values(4, seed=s) for s in range(2)], criteria, show_progress=False)
    one_pass = snp_scores(
        model, [pixel_values(4, seed=s) for s in range(2)], {**criteria, "qk": "attention"}, show_progress=False
    )
    for layer, first in zip(scores.layers, one_pass.layers, strict=True):
        dim = layer.qk.shape[1]
        for h in range(layer.qk.shape[0]):
            # the first pass removes the weakest half by the one-pass criterion
            weakest_half = set(torch.argsort(first.qk[h], stable=True)[: dim - dim // 2].tolist())
            assert set(torch.argsort(layer.qk[h])[: dim - dim // 2].tolist()) == weakest_half
            assert len(set(layer.qk[h].tolist())) == dim  # strictly ordered


def test_attention_kl_gram_is_the_second_order_kl_of_the_attention_rows():
    q, k = _qk(4, heads=2, tokens=6, dim=4)
    q, k = q[None], k[None]  # (B=1, H, N, d)
    s = 0.6
    gram = attention_kl_gram(q, k, s)[0]
    removed = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    eps = 1e-3  # a small removal: KL(A || A') ~ eps^2 / 2 * 1_R^T M 1_R
    for h in range(2):
        logits = s * q[0, h] @ k[0, h].T
        shifted = logits - s * (q[0, h] * removed * eps) @ k[0, h].T
        a, b = logits.softmax(-1), shifted.softmax(-1)
        kl = (a * (a.log() - b.log())).sum().item()
        assert kl == pytest.approx(0.5 * eps**2 * (removed @ gram[h] @ removed).item(), rel=1e-2)
    # the query subsample is an unbiased rescaling when every row is kept
    assert torch.allclose(attention_kl_gram(q, k, s, max_queries=6), attention_kl_gram(q, k, s))


def test_attention_kl_gram_random_query_rows_estimate_all_rows_without_bias():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 12, 4, dtype=torch.float64), torch.randn(1, 2, 12, 4, dtype=torch.float64)
    bias = torch.randn(2, 12, 12, dtype=torch.float64)
    full = attention_kl_gram(q, k, 0.5, bias=bias)
    # every 4-row subset is equally likely: the mean over many seeds converges to the all-rows statistic
    mean = sum(attention_kl_gram(q, k, 0.5, 4, bias, row_seeds=[seed]) for seed in range(3000)) / 3000
    assert torch.allclose(mean, full, rtol=0.05, atol=0.05 * float(full.abs().max()))
    # one fixed evenly spaced subset is not the same estimate, and each image of a batch draws its own rows
    assert not torch.allclose(attention_kl_gram(q, k, 0.5, 4, bias), full, rtol=0.05)
    pair = attention_kl_gram(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), 0.5, 4, bias, row_seeds=[1, 2])
    assert not torch.allclose(pair[0], pair[1])
    assert torch.equal(pair[0], attention_kl_gram(q, k, 0.5, 4, bias, row_seeds=[1])[0])


def test_attention_output_gram_is_the_squared_change_of_the_blocks_output():
    torch.manual_seed(3)
    heads, tokens, dim, dim_v, hidden = 2, 6, 4, 3, 5
    q, k = _qk(5, heads=heads, tokens=tokens, dim=dim)
    v = torch.randn(heads, tokens, dim_v, dtype=torch.float64)
    w = torch.randn(hidden, heads, dim_v, dtype=torch.float64)  # the output projection, columns by (head, value dim)
    # the factor the statistics give the values per head: F F^T = W_o,h^T W_o,h
    values, vectors = torch.linalg.eigh(torch.einsum("khi,khj->hij", w, w))
    factor = vectors * values.clamp_min(0).sqrt()[:, None, :]
    s = 0.7
    gram = attention_output_gram(q[None], k[None], (v @ factor)[None], s)[0]
    removed = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    eps = 1e-4  # a small removal: the head's output change through W_o is ~ eps^2 1_R^T M_h 1_R
    for h in range(heads):
        before = (s * q[h] @ k[h].T).softmax(-1) @ v[h] @ w[:, h].T
        after = (s * (q[h] * (1 - eps * removed)) @ k[h].T).softmax(-1) @ v[h] @ w[:, h].T
        change = (after - before).pow(2).sum().item()
        assert change == pytest.approx(eps**2 * (removed @ gram[h] @ removed).item(), rel=1e-3)
        assert change > 0
    # the query subsample is an unbiased rescaling when every row is kept
    full = attention_output_gram(q[None], k[None], v[None], s)
    assert torch.allclose(attention_output_gram(q[None], k[None], v[None], s, max_queries=tokens), full)


def test_attention_output_criterion_weights_pairs_by_what_the_values_carry():
    """Unlike attention_kl (probabilities only), a head whose values are all equal loses nothing when its attention
    changes: attention_output scores all its pairs 0."""
    q, k = _qk(6, heads=1, tokens=5, dim=3)
    v = torch.ones(1, 5, 2, dtype=torch.float64)
    assert attention_output_gram(q[None], k[None], v[None], 0.5).abs().max() < 1e-12
    assert attention_kl_gram(q[None], k[None], 0.5).abs().max() > 1e-3


def test_attention_kl_cls_counts_the_rows_the_classifier_reads_again():
    q, k = _qk(7, heads=2, tokens=6, dim=4)
    q, k = q[None], k[None]
    s, read = 0.6, 2
    gram = attention_kl_gram(q, k, s, read_tokens=read)[0]
    removed = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    eps = 1e-3
    for h in range(2):
        a = (s * q[0, h] @ k[0, h].T).softmax(-1)
        b = (s * (q[0, h] * (1 - eps * removed)) @ k[0, h].T).softmax(-1)
        kl = (a * (a.log() - b.log())).sum(-1)  # per row
        weighted = kl.sum() + kl[:read].sum() * (6 / read)  # the read rows weigh as much as all rows together
        assert weighted.item() == pytest.approx(0.5 * eps**2 * (removed @ gram[h] @ removed).item(), rel=1e-2)
    assert torch.equal(attention_kl_gram(q, k, s, read_tokens=0), attention_kl_gram(q, k, s))


@pytest.mark.parametrize(("kind", "read"), [("vit", 1), ("vit-base", 0), ("deit", 1), ("deit-teacher", 2)])
def test_attention_kl_cls_reads_the_tokens_the_head_reads(kind, read):
    from optimum_snp.adapters import get_adapter

    model = tiny_model(kind)
    assert get_adapter(model).read_tokens() == read
    batches = [pixel_values(4, seed=2)]
    criteria = {**SNPConfig().criterion_per_group(), "qk": "attention_kl_cls"}
    cls = snp_scores(model, batches, criteria, show_progress=False)
    plain = snp_scores(model, batches, {**criteria, "qk": "attention_kl"}, show_progress=False)
    same = all(torch.equal(a.qk, b.qk) for a, b in zip(cls.layers, plain.layers, strict=True))
    assert same == (read == 0)
