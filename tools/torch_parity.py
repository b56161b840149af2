"""PyTorch reference for ptrag-engine's parity test (tests/parity.rs).

For every case in DIR it reads <case>.checkpoint.safetensors (a checkpoint written by ptrag-engine:
weights plus the run config) and <case>.batch.safetensors (control and target cells, perturbations,
batch ids, GenePT table, retrieval database, and for PT-RAG the Gumbel noise and scorer dropout
mask), builds the same model with plain PyTorch operations in float64, runs one training forward
and backward pass, and writes <case>.expected.safetensors: retrieved candidates, hard selection,
predictions, loss and the gradient of every parameter.

Usage:  python3 -m venv .venv && .venv/bin/pip install torch
        .venv/bin/python tools/torch_parity.py tests/fixtures/parity
"""
import json
import math
import pathlib
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        flat = torch.frombuffer(bytearray(data[start:end]), dtype=DTYPES[info["dtype"]]) if end > start else torch.empty(0)
        tensors[name] = flat.reshape(info["shape"])
    return tensors, meta


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        blob = bytes(t.reshape(-1).view(torch.uint8).tolist())
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def linear(x, p, name):
    return F.linear(x, p[name + ".weight"], p.get(name + ".bias"))


def rms_norm(x, w, eps):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rotary(x, theta):
    """Llama's rotate-half rotary embedding of x [B, heads, S, head_dim] by position in the set."""
    seq, dim = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=x.dtype) / dim)
    angles = torch.arange(seq, dtype=x.dtype)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], -1)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()


def backbone(x, p, m):
    B, S, _ = x.shape
    nh, hd = m["heads"], m["head_dim"]
    for l in range(m["layers"]):
        y = rms_norm(x, p[f"layers.{l}.attn_norm"], m["rms_eps"])
        q, k, v = (linear(y, p, f"layers.{l}.{n}").view(B, S, nh, hd).transpose(1, 2) for n in "qkv")
        if m.get("rope_theta") is not None:
            q, k = rotary(q, m["rope_theta"]), rotary(k, m["rope_theta"])
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if m["causal"]:
            scores = scores.masked_fill(torch.triu(torch.ones(S, S, dtype=torch.bool), 1), float("-inf"))
        att = torch.softmax(scores, -1) @ v
        x = x + linear(att.transpose(1, 2).reshape(B, S, nh * hd), p, f"layers.{l}.o")
        y = rms_norm(x, p[f"layers.{l}.mlp_norm"], m["rms_eps"])
        x = x + linear(F.silu(linear(y, p, f"layers.{l}.gate")) * linear(y, p, f"layers.{l}.up"), p, f"layers.{l}.down")
    return rms_norm(x, p["final_norm"], m["rms_eps"])


def energy(x, y):
    """Half the energy distance per set (V-statistic, distances floored at 1e-4), averaged over sets."""

    def dist(a, b):
        return torch.sqrt(torch.clamp(((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1), min=1e-8))

    return (dist(x, y).mean((1, 2)) - 0.5 * dist(x, x).mean((1, 2)) - 0.5 * dist(y, y).mean((1, 2))).mean()


def forward_loss(p, m, sparsity, data, B, S, energy_fn=energy):
    """One training forward pass of the model `m["kind"]` with parameters `p` on `data` (control and
    target cells, perturbations, batch ids, GenePT table, retrieval database, and for PT-RAG the
    Gumbel noise and dropout mask): returns (loss, pred, extras). `energy_fn(pred, target)` is the
    loss (default: the exact broadcast form the parity fixture uses)."""
    G, H, K, kind = m["genes"], m["hidden"], m["top_k"], m["kind"]
    dt = p["basal.weight"].dtype
    control = data["control"].to(dt).view(B, S, G)
    target = data["target"].to(dt).view(B, S, G)
    pidx = data["perturbation"]
    genept = data["genept"].to(dt)
    basal = linear(control, p, "basal")
    if kind == "state":
        one_hot = F.one_hot(pidx, m["perturbations"]).to(dt)
        pert = one_hot @ p["pert.weight_t"] + p["pert.bias"]
    else:
        pert = linear(genept[pidx], p, "pert")
    out = {}
    w = None
    if kind in ("state", "state-genept"):
        x = basal + pert[:, None, :]
    else:
        with torch.no_grad():
            sims = F.normalize(genept[pidx], dim=-1) @ F.normalize(genept, dim=-1).T
            sims[:, data["in_database"] == 0] = float("-inf")
            # The reference's training-time bug excludes only set 0's own perturbation.
            rows = [0] if m["self_exclusion"] == "first-set-in-training" else range(B)
            for r in rows:
                sims[r, pidx[r]] = float("-inf")
            idx = sims.topk(K, dim=-1).indices
        out["candidates"] = idx.reshape(-1)
        cand = linear(genept[idx], p, "pert")  # [B, K, H]
        context = m.get("candidate_context", "genept")
        if context != "genept":
            # Observed responses: each candidate's mean change in the set's cell type (with an
            # indicator), the query's mean change averaged over the other cell types observed.
            ct = data["cell_type"]
            C, P = data["control_mean"].shape[0], m["perturbations"]
            change = data["response_change"].to(dt).view(C, P, G)
            seen = data["response_observed"].to(dt).view(C, P)
            cand_change, cand_seen = change[ct[:, None], idx], seen[ct[:, None], idx]  # [B, K, G], [B, K]
            responses = linear(torch.cat([cand_change, cand_seen[..., None]], -1), p, "responses.candidate")
            cand = cand + responses if context == "both" else responses
            other = torch.stack([(torch.arange(C) != ct[b]).to(dt) * seen[:, pidx[b]] for b in range(B)])  # [B, C]
            count = other.sum(-1, keepdim=True)
            cross = (other[:, :, None] * change[:, pidx].transpose(0, 1)).sum(1) / count.clamp(min=1)
            has = (count > 0).to(dt)
            pert = pert + linear(torch.cat([cross * has, has], -1), p, "responses.query")
        if m.get("similarity_features", False):
            # Per candidate, standardised over its query's K: the GenePT cosine, and with observed
            # responses the cosine of its change to the query's cross-cell-type change.
            columns = [(sims.gather(1, idx).to(dt), torch.ones(B, K, dtype=torch.bool))]
            if context != "genept":
                norms = cross.norm(dim=-1)[:, None] * cand_change.norm(dim=-1)
                dots = (cross[:, None, :] * cand_change).sum(-1)
                cosine = torch.where(norms > 0, dots / norms.clamp(min=1e-300), torch.zeros_like(dots))
                columns.append((cosine, (has > 0) & (cand_seen > 0)))
            features = []
            for value, present in columns:
                count = present.sum(-1, keepdim=True).clamp(min=1)
                mean = (value * present).sum(-1, keepdim=True) / count
                sd = ((((value - mean) * present) ** 2).sum(-1, keepdim=True) / count).sqrt().clamp(min=1e-6)
                features.append(torch.where(present, (value - mean) / sd, torch.zeros_like(value)))
            cand = cand + linear(torch.stack(features, -1), p, "similarity")
        if kind == "vanilla-rag":
            q = linear(basal + pert[:, None, :], p, "context.q")
            k, v = linear(cand, p, "context.k"), linear(cand, p, "context.v")
            x = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(H), -1) @ v
        else:
            e = lambda t: t.expand(B, S, K, H)
            trip = torch.cat([e(basal[:, :, None, :]), e(pert[:, None, None, :]), e(cand[:, None, :, :])], -1)
            trip = F.layer_norm(trip, (3 * H,), p["select.norm.weight"], p["select.norm.bias"], 1e-5)
            hidden = F.gelu(linear(trip, p, "select.score_hidden"))
            hidden = hidden * data["dropout_keep"].to(dt).view(B, S, K, H) / (1.0 - m["scorer_dropout"])
            logits = linear(hidden, p, "select.score_out")
            if m.get("logit_norm", "global-std") == "global-std":
                logits = logits / logits.std().clamp(min=1e-6)
            soft = torch.softmax((logits + data["gumbel"].to(dt).view(B, S, K, 2)) / m["tau"], -1)
            hard = F.one_hot(soft.argmax(-1), 2).to(dt)
            w = (hard - soft.detach() + soft)[..., 1:]
            x = (w * linear(trip, p, "select.proj")).sum(2)
            out["selection"] = w.reshape(-1, 1)
    x = x + p["batch.weight"][data["batch"].view(B, S)]
    out_pre = linear(backbone(x, p, m) + basal, p, "head")
    if m.get("response_readout", False):
        # The candidates' observed changes weighted by the softmax over candidates of the
        # include-exclude gap, the unobserved masked out; a per-gene gate.
        gap = logits[..., 1] - logits[..., 0] + ((1 - cand_seen) * -1e4)[:, None, :]  # [B, S, K]
        weights = torch.softmax(gap, -1)
        out_pre = out_pre + (weights[..., None] * cand_change[:, None]).sum(2) * p["responses.readout_gate"]
    if m.get("output_anchor", "none") == "shift":
        # The cell type's mean observed change.
        C, P = data["control_mean"].shape[0], m["perturbations"]
        change = data["response_change"].to(dt).view(C, P, G)
        seen = data["response_observed"].to(dt).view(C, P)
        shift = (seen[:, :, None] * change).sum(1) / seen.sum(1, keepdim=True).clamp(min=1)
        out_pre = out_pre + shift[data["cell_type"]][:, None, :]
    if m.get("output_anchor", "none") == "linear":
        # The stacked model: each set's anchor row plus its control cells centred on their mean; no ReLU.
        pred = out_pre + data["anchor"].to(dt)[:, None, :] + control - control.mean(1, keepdim=True)
    else:
        pred = F.relu(out_pre)
    loss = energy_fn(pred, target)
    if w is not None:
        loss = loss + sparsity * w.mean()
    return loss, pred, out


def run_case(ckpt_path, batch_path):
    weights, meta = read_safetensors(ckpt_path)
    cfg = json.loads(meta["config"])
    m = cfg["model"]
    data, bmeta = read_safetensors(batch_path)
    B, S = int(bmeta["sets"]), int(bmeta["cells"])
    p = {k[len("param.") :]: v.double().requires_grad_() for k, v in weights.items() if k.startswith("param.")}
    loss, pred, out = forward_loss(p, m, cfg["sparsity"], data, B, S)
    loss.backward()
    out["loss"] = loss.reshape(1)
    out["pred"] = pred.reshape(B * S, m["genes"])
    for name, t in p.items():
        out["grad." + name] = t.grad if t.grad is not None else torch.zeros_like(t)
    return {k: (v.double() if v.is_floating_point() else v) for k, v in out.items()}


def main():
    directory = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/parity")
    cases = sorted(q.name[: -len(".checkpoint.safetensors")] for q in directory.glob("*.checkpoint.safetensors"))
    if not cases:
        sys.exit(f"{directory}: no <case>.checkpoint.safetensors (run: cargo test --test parity -- --ignored write_parity_inputs)")
    for case in cases:
        out = run_case(directory / f"{case}.checkpoint.safetensors", directory / f"{case}.batch.safetensors")
        write_safetensors(directory / f"{case}.expected.safetensors", out)
        print(f"{case}: loss {out['loss'].item():.12f}, {sum(k.startswith('grad.') for k in out)} gradients (torch {torch.__version__})")


if __name__ == "__main__":
    main()
