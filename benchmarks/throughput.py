"""Training throughput across latent sizes: samples/s of full steps (forward, backward, Adam).

    python benchmarks/throughput.py            # all latent sizes, every backend usable here
    python benchmarks/throughput.py --quick    # a few sizes, a few repeats: seconds

For each latent size Z (hidden 512, batch 128, float32) it times, interleaved within each repeat so
that every contender sees the same machine state:

- each minivae backend usable here (numpy, cpu-fused; cupy and numba-cuda when a GPU is usable);
- PyTorch eager on the same MLP and loss (when torch is installed; on CUDA too when available),
  with torch's thread count set to the BLAS thread count minivae runs with;
- the BLAS floor: only the step's matrix products into preallocated outputs, nothing else. No
  implementation that uses these BLAS products can beat it.

Each contender warms up, then each repeat times a number of steps; the reported time per step is
the median over repeats. Besides the table it prints, it writes ``benchmarks/results/throughput.json``
(numbers + machine) and ``throughput.png`` (samples/s against Z, log axes, 784 marked). Per Z it
also reports the parameter count, the bytes of parameters + gradients + Adam moments + activations,
and the FLOPs of one step's matrix products, which grow linearly in Z.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minivae  # noqa: E402
from minivae import backend as backends  # noqa: E402
from minivae.train import atomic_write  # noqa: E402

LATENTS = (2, 10, 20, 50, 100, 200, 500, 784, 1000, 2000, 5000)
QUICK_LATENTS = (20, 1000)
D, H, B = 784, 512, 128


# ------------------------------------------------------------------------------ sizes and costs


def layer_shapes(Z, hidden=(H,)):
    """(fan_in, fan_out) of every dense layer, encoder then decoder."""
    enc = list(zip((D,) + hidden, hidden + (2 * Z,)))
    dec = list(zip((Z,) + hidden[::-1], hidden[::-1] + (D,)))
    return enc, dec


def costs(Z, batch=B):
    """Parameter count, bytes held during a step, and FLOPs of the step's matrix products."""
    enc, dec = layer_shapes(Z)
    layers = enc + dec
    P = sum(i * o + o for i, o in layers)
    # Forward x·W, backward xᵀ·d and d·Wᵀ: 2·B·in·out FLOPs each; the first layer needs no d·Wᵀ.
    flops = sum(3 * 2 * batch * i * o for i, o in layers) - 2 * batch * D * H
    acts = batch * (D + Z + Z + 1 + 1 + 2 * sum(o for _, o in layers))  # x, ε, z, KL, ℓ, outs + grads
    return {"params": P, "bytes": 4 * (4 * P + acts), "flops": flops}


# ------------------------------------------------------------------------------ contenders


class Ours:
    def __init__(self, name, Z, x):
        self.vae = minivae.VAE(D, Z, (H,), seed=0, backend=name)
        self.opt = minivae.Adam(self.vae.params)
        self.x = x
        self.sync = _sync_for(name)

    def step(self):
        self.vae.forward(self.x)
        self.opt.step(self.vae.backward())

    def finish(self):
        self.sync()


def _sync_for(name):
    if name == "cupy":
        import cupy

        return cupy.cuda.Device().synchronize
    if name == "numba-cuda":
        from numba import cuda

        return cuda.synchronize
    return lambda: None


class BlasFloor:
    """The step's matrix products with the same shapes and transposes as the engine, nothing else."""

    def __init__(self, Z, x):
        rng = np.random.default_rng(0)
        enc, dec = layer_shapes(Z)
        self.plan = []
        for net, inp in ((enc, x), (dec, rng.standard_normal((B, Z)).astype(np.float32))):
            h = inp
            for li, (i, o) in enumerate(net):
                W = (rng.standard_normal((i, o)) * 0.01).astype(np.float32)
                out = np.empty((B, o), np.float32)
                self.plan.append((h, W, out, np.empty((i, o), np.float32),
                                  np.empty((B, i), np.float32) if (net is dec or li > 0) else None))
                h = out

    def step(self):
        for h, W, out, _, _ in self.plan:
            np.matmul(h, W, out=out)
        for h, W, out, dW, dh in reversed(self.plan):
            np.matmul(h.T, out, out=dW)
            if dh is not None:
                np.matmul(out, W.T, out=dh)

    def finish(self):
        pass


class TorchEager:
    def __init__(self, Z, x, device):
        import torch

        self.torch, self.device, self.Z = torch, device, Z
        torch.manual_seed(0)
        nn = torch.nn
        self.enc = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 2 * Z)).to(device)
        self.dec = nn.Sequential(nn.Linear(Z, H), nn.ReLU(), nn.Linear(H, D)).to(device)
        self.opt = torch.optim.Adam(list(self.enc.parameters()) + list(self.dec.parameters()), lr=1e-3)
        self.x = torch.from_numpy(x).to(device)

    def step(self):
        torch, Z = self.torch, self.Z
        h = self.enc(self.x)
        mu, logvar = h[:, :Z], h[:, Z:]
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        a = self.dec(z)
        recon = torch.nn.functional.binary_cross_entropy_with_logits(a, self.x, reduction="sum")
        kl = 0.5 * (mu * mu + logvar.exp() - logvar - 1).sum()
        loss = (recon + kl) / self.x.shape[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def finish(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()


# ------------------------------------------------------------------------------ measuring


def blas_threads():
    try:
        from threadpoolctl import threadpool_info

        return max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    except ImportError:
        return os.cpu_count() or 1


def machine():
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version",
                                                      "num_threads", "architecture")}
                               for p in threadpool_info()]
    except ImportError:
        pass
    for mod in ("numba", "torch", "cupy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    ok, why = backends.gpu_usable()
    info["gpu"] = _gpu_name() if ok else f"none ({why})"
    return info


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_name():
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


def contenders(Z, x, have_torch, torch_cuda):
    made = {"blas-floor": BlasFloor(Z, x)}
    for name in usable_backends():
        made[name] = Ours(name, Z, x)
    if have_torch:
        made["torch"] = TorchEager(Z, x, "cpu")
        if torch_cuda:
            made["torch-cuda"] = TorchEager(Z, x, "cuda")
    return made


def usable_backends():
    names = ["numpy"]
    if backends.numba_usable():
        names.append("cpu-fused")
    if backends.gpu_usable()[0]:
        names += ["cupy", "numba-cuda"]
    return names


SETTLE_S = 0.25  # idle time before each timed block


def time_steps(c, steps):
    """Seconds per step. First one untimed step, after letting the thread pools of the contender
    timed before go idle: OpenBLAS's, Numba's and PyTorch's OpenMP threads spin for a while after
    their last task, and on 2 cores those spinning threads would slow whoever runs next."""
    time.sleep(SETTLE_S)
    c.step()
    c.finish()
    t = time.perf_counter()
    for _ in range(steps):
        c.step()
    c.finish()
    return (time.perf_counter() - t) / steps


def measure(Z, repeats, steps, warmup, have_torch, torch_cuda):
    x = (np.random.default_rng(1).random((B, D)) > 0.5).astype(np.float32)
    cs = contenders(Z, x, have_torch, torch_cuda)
    for c in cs.values():
        for _ in range(warmup):
            c.step()
    times = {name: [] for name in cs}
    names = list(cs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            times[name].append(time_steps(cs[name], steps))
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="two sizes, few repeats: a smoke run")
    p.add_argument("--latents", default=None, help="comma-separated latent sizes")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per timed repeat")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    latents = (tuple(int(z) for z in args.latents.split(",")) if args.latents
               else QUICK_LATENTS if args.quick else LATENTS)
    repeats = args.repeats or (3 if args.quick else 7)
    steps = args.steps or (3 if args.quick else 10)
    warmup = 1 if args.quick else 3

    threads = blas_threads()
    have_torch, torch_cuda, torch_note = False, False, "torch not installed: skipped"
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(threads)
            have_torch, torch_note = True, f"torch {torch.__version__}, {threads} threads (= BLAS threads)"
            torch_cuda = torch.cuda.is_available()
        except ImportError:
            pass
    info = machine()
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, BLAS threads {threads}; GPU: {info['gpu']}")
    print(f"{torch_note}; hidden {H}, batch {B}, float32; median of {repeats} repeats × {steps} steps")

    rows = []
    for Z in latents:
        t = measure(Z, repeats, steps, warmup, have_torch, torch_cuda)
        row = {"latent": Z, **costs(Z), "step_s": t, "samples_per_s": {k: B / v for k, v in t.items()}}
        if not rows:
            print_header(t)
        rows.append(row)
        print_row(row)
    result = {"config": {"hidden": H, "batch": B, "dtype": "float32", "repeats": repeats,
                         "steps": steps, "blas_threads": threads}, "machine": info, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "throughput.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    plot(rows, args.out / "throughput.png", info)
    print(f"wrote {args.out / 'throughput.json'} and {args.out / 'throughput.png'}")
    return 0


def print_header(t):
    print("each cell: ms per step, samples/s, speed relative to PyTorch eager (>1: faster), "
          "time relative to the BLAS floor (1 = only matmuls)")
    print(f"{'Z':>5} {'params':>10} {'MB':>7} {'GFLOP':>6}  " + "  ".join(f"{k:>24}" for k in t))


def print_row(row):
    t, Z = row["step_s"], row["latent"]
    cells = []
    for k, v in t.items():
        vs_torch = f"{t['torch'] / v:4.2f}" if "torch" in t else "  - "
        vs_floor = f"{v / t['blas-floor']:4.2f}"
        cells.append(f"{v * 1e3:7.2f} {B / v:6.0f} {vs_torch}x {vs_floor}")
    print(f"{Z:>5} {row['params']:>10,} {row['bytes'] / 1e6:7.1f} {row['flops'] / 1e9:6.2f}  " +
          "  ".join(f"{c:>24}" for c in cells))


def plot(rows, path, info):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Zs = [r["latent"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"blas-floor": dict(color="k", ls="--"), "torch": dict(color="tab:red", marker="s"),
              "numpy": dict(color="tab:gray", marker="o"), "cpu-fused": dict(color="tab:blue", marker="o"),
              "cupy": dict(color="tab:green", marker="^"), "numba-cuda": dict(color="tab:purple", marker="v"),
              "torch-cuda": dict(color="tab:orange", marker="s")}
    for name in rows[0]["samples_per_s"]:
        label = "BLAS floor (matmuls only)" if name == "blas-floor" else \
                "PyTorch eager" if name == "torch" else name
        ax.plot(Zs, [r["samples_per_s"][name] for r in rows], label=label, **styles.get(name, {}))
    ax.axvline(784, color="0.6", lw=1)
    ax.text(784, 0.98, " Z = D = 784", transform=ax.get_xaxis_transform(),
            va="top", fontsize=8, color="0.4")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latent size Z")
    ax.set_ylabel("training samples / s")
    ax.set_title(f"VAE training throughput (hidden 512, batch 128, float32)\n{info['cpu']}, "
                 f"{info['cpu_count']} CPUs", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


if __name__ == "__main__":
    sys.exit(main())
