#!/usr/bin/env python3
"""A Qwen3 MoE block in eager PyTorch on torch._grouped_mm (the way torchtitan-style trainers build
one), forward and forward+backward, to set beside `bench_moe_block --model M` (moejit's
Qwen3MoeBlock): the same routing (softmax, top-k, renormalized), the same GEMMs, bf16.

    python3 bench/peers/torch_moe_block.py --moejit build-device/moejit --model qwen3-30b-a3b [--tokens 8192]

Differences to keep in mind when comparing: autograd here gives bf16 weight gradients where
Qwen3MoeBlock writes fp32 ones (twice the bytes), and this block gathers, scatters and combines
with separate PyTorch ops where moejit fuses them into the GEMMs.
"""
import torch
import torch.nn.functional as F

from peer_common import median_ms, model_gemm, parse_arguments


def qwen3_block(x, router, gate_up, down, topk):
    """x [T, H], router [E, H], gate_up [E, 2I, H] (gate rows first), down [E, H, I] -> [T, H], logits."""
    E = router.shape[0]
    logits = x @ router.t()                                   # [T, E]
    weights, experts = logits.float().softmax(-1).topk(topk, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)         # [T, topk]
    flat = experts.flatten()                                  # [M] slot t*topk+j -> expert
    order = flat.argsort(stable=True)                         # routed rows in expert order
    offs = torch.cumsum(torch.bincount(flat, minlength=E), 0, dtype=torch.int32)
    token = order // topk
    h = torch._grouped_mm(x[token], gate_up.transpose(-2, -1), offs=offs)  # [M, 2I]
    gate, up = h.chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(gate) * up, down.transpose(-2, -1), offs=offs)  # [M, H]
    y = y * weights.flatten()[order].unsqueeze(-1).to(y.dtype)
    return torch.zeros_like(x).index_add_(0, token, y), logits


def main():
    args = parse_arguments(__doc__)
    two_i, H, E, topk = model_gemm(args.moejit, args.model, "gate_up")  # W [E, 2I, H]
    I = two_i // 2
    T = args.tokens
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}; {args.model}: H {H}, I {I}, "
          f"E {E}, top-{topk}, {T} tokens")
    x = ((torch.rand(T, H, device=dev) * 2 - 1) * 0.1).to(bf16).requires_grad_()
    router = ((torch.rand(E, H, device=dev) * 2 - 1) * 0.05).to(bf16).requires_grad_()
    gate_up = ((torch.rand(E, 2 * I, H, device=dev) * 2 - 1) * 0.05).to(bf16).requires_grad_()
    down = ((torch.rand(E, H, I, device=dev) * 2 - 1) * 0.05).to(bf16).requires_grad_()
    grad_out = torch.rand(T, H, device=dev, dtype=bf16) * 2 - 1

    with torch.no_grad():
        forward_ms = median_ms(lambda: qwen3_block(x, router, gate_up, down, topk), iterations=10)

    def training():
        out, _ = qwen3_block(x, router, gate_up, down, topk)
        out.backward(grad_out)
        for p in (x, router, gate_up, down):
            p.grad = None

    training_ms = median_ms(training, iterations=10)
    print("| tokens | pass | torch._grouped_mm block ms |\n|---|---|---|")
    print(f"| {T} | forward | {forward_ms:.3f} |\n| {T} | forward+backward | {training_ms:.3f} |")


if __name__ == "__main__":
    main()
