"""This project's PyTorch timing reference: the training step of tools/torch_parity.py's model
(the same functions the parity test checks against, so the same work as ptrag-engine's step) in
float32, with torch.optim.Adam (lr 1e-3) and gradient clipping at 10, on synthetic inputs of the
paper's shapes (G 2000, one-hot P 2024, GenePT 1536, 56 batches, K 32). Prints one JSON line.

    .venv/bin/python tools/torch_step.py --model pt-rag --sets 64 --cells 64 --steps 5 --threads 2
"""
import argparse
import json
import math
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_parity import forward_loss  # noqa: E402

def energy_cdist(x, y):
    """The same loss as torch_parity.energy through torch.cdist, as a PyTorch user would write it
    (the parity form broadcasts a [B, S, S, G] tensor: exact, but not how one trains)."""
    d = lambda a, b: torch.cdist(a, b).mean((1, 2))
    return (d(x, y) - 0.5 * d(x, x) - 0.5 * d(y, y)).mean()


G, P, E, NB, H, L, HEADS, HD, MLP, K = 2000, 2024, 1536, 56, 128, 8, 12, 58, 2784, 32


def parameters(kind):
    """Named tensors shaped like ptrag-engine's parameters, PyTorch-style uniform initialisation."""
    shapes = {"basal.weight": (H, G), "basal.bias": (H,), "batch.weight": (NB, H), "head.weight": (G, H), "head.bias": (G,), "final_norm": (H,)}
    if kind == "state":
        shapes.update({"pert.weight_t": (P, H), "pert.bias": (H,)})
    else:
        shapes.update({"pert.weight": (H, E), "pert.bias": (H,)})
    if kind == "vanilla-rag":
        shapes.update({f"context.{n}.weight": (H, H) for n in "qkv"})
    if kind == "pt-rag":
        shapes.update({"select.norm.weight": (3 * H,), "select.norm.bias": (3 * H,), "select.score_hidden.weight": (H, 3 * H),
                       "select.score_hidden.bias": (H,), "select.score_out.weight": (2, H), "select.score_out.bias": (2,),
                       "select.proj.weight": (H, 3 * H), "select.proj.bias": (H,)})
    for l in range(L):
        shapes.update({f"layers.{l}.{n}.weight": (HEADS * HD, H) for n in "qkv"})
        shapes.update({f"layers.{l}.o.weight": (H, HEADS * HD), f"layers.{l}.gate.weight": (MLP, H), f"layers.{l}.up.weight": (MLP, H),
                       f"layers.{l}.down.weight": (H, MLP), f"layers.{l}.attn_norm": (H,), f"layers.{l}.mlp_norm": (H,)})
    p = {}
    for name, shape in shapes.items():
        if len(shape) == 1 and ("norm" in name):
            t = torch.ones(shape) if not name.endswith("bias") else torch.zeros(shape)
        else:
            fan_in = shape[-1] if len(shape) == 2 else H
            t = torch.empty(shape).uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        p[name] = t.requires_grad_()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="pt-rag", choices=["state", "state-genept", "vanilla-rag", "pt-rag"])
    ap.add_argument("--sets", type=int, default=64)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (every tensor is created there)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_default_device(a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    B, S = a.sets, a.cells
    m = {"kind": a.model, "genes": G, "hidden": H, "top_k": K, "perturbations": P, "self_exclusion": "always", "scorer_dropout": 0.1,
         "tau": 0.5, "heads": HEADS, "head_dim": HD, "layers": L, "rms_eps": 1e-6, "rope_theta": None, "causal": False}
    p = parameters(a.model)
    opt = torch.optim.Adam(p.values(), lr=1e-3)
    genept = torch.randn(P, E)
    genept[0] = 0
    expression = lambda: torch.where(torch.rand(B * S, G) < 0.5, torch.zeros(()), torch.rand(B * S, G) * 4)
    data = {"control": expression(), "target": expression(), "perturbation": torch.randint(1, P, (B,)), "genept": genept,
            "in_database": (torch.arange(P) > 0).long(), "batch": torch.randint(0, NB, (B * S,))}

    def step():
        data["gumbel"] = -torch.log(torch.empty(B * S * K * 2).exponential_())
        data["dropout_keep"] = torch.bernoulli(torch.full((B * S * K * H,), 0.9))
        opt.zero_grad(set_to_none=True)
        loss, _, _ = forward_loss(p, m, 0.1, data, B, S, energy_cdist)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(p.values(), 10.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    median = sorted(times)[len(times) // 2]
    print(json.dumps({"impl": "pytorch (tools/torch_step.py)", "model": a.model, "sets": B, "cells": S, "threads": torch.get_num_threads(), "device": a.device,
                      "median_step_seconds": round(median, 4), "cells_per_second": round(B * S / median, 1), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
