#!/usr/bin/env python3
"""torch._grouped_mm (PyTorch's CUTLASS grouped GEMM), the peer issue 5 names, on the shapes that
`moejit bench` times: forward, dX and dW of each model preset's gate_up and down GEMMs, uniform
random top-k routing, bf16, beside torch.mm (cuBLAS) dense at equal FLOPs.

    python3 bench/peers/torch_grouped_mm.py --moejit build-device/moejit --model qwen3-30b-a3b [--tokens 8192]

The shapes come from `moejit source --model M --gemm G` (W is [E, N, K]), so they cannot drift from
the presets. Rows are in expert order (what moejit's plain passes take):
  fwd  Y [M, N]     = X [M, K] @ W[e]^T        _grouped_mm(X, W.transpose(-2, -1), offs)
  dX   dX [M, K]    = dY [M, N] @ W[e]         _grouped_mm(dY, W, offs)
  dW   dW [E, N, K] = dY_e^T @ X_e             _grouped_mm(dY.t(), X, offs)
Times are CUDA-event medians: 5 rounds of 20 launches after 3 warm-up launches, the median round.
"""
import torch

from peer_common import median_ms, model_gemm, parse_arguments


def main():
    args = parse_arguments(__doc__)
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    print(f"device {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}; "
          f"model {args.model}, {args.tokens} tokens")
    print("| gemm | pass | shape [E, N, K], rows | torch._grouped_mm ms | TFLOP/s | torch.mm dense ms | TFLOP/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for gemm in ("gate_up", "down"):
        N, K, E, topk = model_gemm(args.moejit, args.model, gemm)
        T = args.tokens
        M = T * topk
        # Each token picks topk distinct experts uniformly (as moejit's synthetic routing does).
        experts = torch.rand(T, E, device=device).topk(topk, dim=1).indices.flatten()
        m_sizes = torch.bincount(experts, minlength=E).to(torch.int32)
        offs = torch.cumsum(m_sizes, 0, dtype=torch.int32)
        x = torch.rand(M, K, device=device, dtype=torch.bfloat16) * 2 - 1   # [M, K]
        dy = torch.rand(M, N, device=device, dtype=torch.bfloat16) * 2 - 1  # [M, N]
        w = torch.rand(E, N, K, device=device, dtype=torch.bfloat16) * 2 - 1  # [E, N, K]
        flops = 2.0 * M * N * K
        passes = {
            "fwd": (lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs), (M, K, N)),
            "dx": (lambda: torch._grouped_mm(dy, w, offs=offs), (M, N, K)),
            "dw": (lambda: torch._grouped_mm(dy.t(), x, offs=offs), (N, M, K)),
        }
        first = int(m_sizes[0])  # expert 0's rows, checked against torch.mm before timing
        expected = {"fwd": x[:first] @ w[0].t(), "dx": dy[:first] @ w[0], "dw": dy[:first].t() @ x[:first]}
        for name, (run, (dm, dk, dn)) in passes.items():
            got = run()
            got = got[0] if name == "dw" else got[:first]
            torch.testing.assert_close(got.float(), expected[name].float(), rtol=2e-2, atol=2e-1)
            grouped = median_ms(run)
            a = torch.rand(dm, dk, device=device, dtype=torch.bfloat16)
            b = torch.rand(dk, dn, device=device, dtype=torch.bfloat16)
            dense = median_ms(lambda: torch.mm(a, b))
            del a, b
            print(f"| {gemm} | {name} | [{E}, {N}, {K}], {M} | {grouped:.3f} | {flops / grouped / 1e9:.1f} | "
                  f"{dense:.3f} | {flops / dense / 1e9:.1f} | {dense / grouped:.2f} |", flush=True)
        del x, dy, w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
