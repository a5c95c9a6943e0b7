"""What the PyTorch peer scripts share: a preset's GEMM shape from moejit itself, and CUDA-event timing."""
import argparse
import re
import statistics
import subprocess

import torch


def parse_arguments(description):
    """--moejit (the CLI that names the shapes), --model, --tokens; seeds torch."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--moejit", default="build-device/moejit")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()
    torch.manual_seed(0)
    return args


def model_gemm(moejit, model, gemm):
    """(N, K, E, topk) of a preset's GEMM (W is [E, N, K]), from the spec `moejit source` prints atop
    the generated source, so that the shapes cannot drift from the presets."""
    source = subprocess.run([moejit, "source", "--model", model, "--gemm", gemm, "--pass", "fwd"],
                            check=True, capture_output=True, text=True).stdout
    spec = re.search(r"moejit kernel (\S+)", source).group(1)
    fields = dict(re.findall(r":(n|k|e|topk)(\d+)", ":" + spec))
    return int(fields["n"]), int(fields["k"]), int(fields["e"]), int(fields["topk"])


def median_ms(run, rounds=5, iterations=20, warmup=3):
    """The median over `rounds` of the mean time of `iterations` back-to-back calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(rounds):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iterations):
            run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / iterations)
    return statistics.median(times)
