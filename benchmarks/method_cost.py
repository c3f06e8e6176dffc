"""Training-step cost of the methods, relative to each other, measured in one run.

    python benchmarks/method_cost.py --classes 200 --json
    python benchmarks/method_cost.py --classes 80 --methods pbce ssgrl sst hst satl sst_dense_ist sarb dsrb
    python benchmarks/method_cost.py --classes 80 200 1000 5000 --batch 4 --steps 2 --warmup 1

Several ``--classes`` give one table per size. A method that cannot run at a size says why: a
worker that needs more than ``--max-mb`` of memory or takes longer than ``--timeout`` seconds is
stopped, and the table prints the reason in place of its numbers.

On cached-feature shapes (B x 1280 x 14 x 14, EfficientNet-Lite0 at 448 px; synthetic values, the
cost does not depend on them): one training step = forward through the method, its loss terms,
backward, Adam step, with the method in its pseudo-labelling phase (epoch >= E0, so every branch
runs). The trunk is the papers' size unless ``--dim`` says otherwise.

Labels: by default a dense synthetic draw (30% of entries known, about 23 positives per image at
C = 200); ``--known P --positive-rate R`` draws each entry positive with probability R and known
with probability P instead (R = 0.036 is COCO's 2.9 labels per image over 80 classes). Blending
methods only re-run the graph network on the images a blend changed, so their cost depends on it.

``--backbone resnet101`` puts the backbone in the step (images at ``--image-size``, its
``--freeze`` policy, ``hcp`` by default: the SARL methods' recipe, layer4 trains), the regime of
the authors' recipes; without it the step starts from cached maps (the CPU regime).

Time: median over ``--steps`` timed steps after warm-up. Peak memory: on CUDA,
``torch.cuda.max_memory_allocated`` around the steps; on CPU, each method runs in a fresh
subprocess and the peak resident set size during the steps (``VmHWM``, reset after the model is
built) minus the resident size just before the first step (the memory training needs beyond the model: activations, gradients,
optimiser state).
``--profile N`` adds, per method, the N operators of one more step (after the timed ones) that
took the most time of their own, grouped by input shapes (torch.profiler on CPU): where the step
goes, e.g. which matrix products are the graph network's second pass.
The last line printed with ``--json`` is one JSON object: method -> {"time_ratio", "memory_ratio"}
against ``ssgrl``, plus the raw numbers (with several sizes: size -> that object); a method that
could not run has {"failed": reason}.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

DEFAULT_METHODS = ["pbce", "ssgrl", "sst", "hst", "satl", "hst_satl", "sst_dense_ist", "sarb", "dsrb",
                   "sr", "clsl"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Start the process's peak resident size afresh (Linux: writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    """Peak resident size since the last :func:`_reset_peak_rss` (VmHWM), else the lifetime peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(method: str, classes: int, dim: int, attention: int, channels: int):
    from mlrpl.methods import create_method, get_method_class
    from mlrpl.methods.base import MethodContext
    name, overrides = method, {}
    if method == "sst_dense_ist":
        name, overrides = "sst", {"dense": True}
    elif method == "hst_satl":   # hst with SATL's per-class thresholds in place of DTL
        name, overrides = "hst", {"thresholds": "satl"}
    fields = get_method_class(name).Config.__dataclass_fields__
    if "trunk" in fields:
        overrides["trunk"] = {"dim": dim, "attention_dim": attention}
    if "start_epoch" in fields:
        overrides["start_epoch"] = 0  # every branch runs from the first step
    rng = np.random.default_rng(0)
    partial = np.where(rng.random((512, classes)) < 0.3,
                       np.where(rng.random((512, classes)) < 0.1, 1, -1), 0).astype(np.int8)
    ctx = MethodContext(num_classes=classes, feature_channels=channels,
                        class_names=[f"c{i}" for i in range(classes)], partial_labels=partial,
                        embeddings=rng.normal(size=(classes, 300)).astype(np.float32))
    return create_method(name, ctx, **overrides)


def batch_for(classes: int, batch: int, channels: int, hw: int, device, seed: int,
              known: float | None = None, positive_rate: float | None = None):
    g = torch.Generator().manual_seed(seed)
    if known is None and positive_rate is None:
        target = torch.where(torch.rand(batch, classes, generator=g) < 0.3,
                             torch.where(torch.rand(batch, classes, generator=g) < 0.15, 1, -1), 0)
        full = torch.where(target == 0,
                           torch.where(torch.rand(batch, classes, generator=g) < 0.1, 1, -1), target)
    else:
        full = torch.where(torch.rand(batch, classes, generator=g) < (positive_rate or 0.1), 1, -1)
        target = torch.where(torch.rand(batch, classes, generator=g) < (known or 0.3), full, 0)
    return {"features": torch.randn(batch, channels, hw, hw, generator=g).to(device),
            "target": target.to(torch.int8).to(device), "full": full.to(torch.int8).to(device),
            "index": torch.arange(batch, device=device), "epoch": 5, "step": 0,
            "steps_per_epoch": 100}


def measure(method: str, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = None
    channels, hw = args.channels, args.hw
    if args.backbone:
        from mlrpl.models.backbones import apply_freeze, create_backbone
        backbone = apply_freeze(create_backbone(args.backbone, pretrained=False), args.freeze)
        backbone = backbone.to(device).train()
        channels, hw = backbone.out_channels, 3   # the batch holds images; hw is unused
    m = build(method, args.size, args.dim, args.attention, channels).to(device)
    groups = list(m.param_groups())
    if backbone is not None and any(p.requires_grad for p in backbone.parameters()):
        groups.append({"params": [p for p in backbone.parameters() if p.requires_grad]})
    opt = torch.optim.Adam(groups, lr=1e-4)
    if hasattr(m, "prototypes"):
        m.prototypes.centres.normal_()  # HST: prototypes as after a k-means pass (not timed)
        m.prototypes.valid.fill_(True)
    m.train()
    epoch = 10

    def step(i):
        b = batch_for(args.size, args.batch, channels, hw, device, i, args.known,
                      args.positive_rate)
        b["epoch"] = epoch
        if backbone is not None:
            g = torch.Generator().manual_seed(i)
            images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
            b["features"] = backbone(images.to(device))
        out = m(b["features"], b)
        terms = m.loss(out, b, epoch)
        total = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        m.update_state(out, b)
        if device.type == "cuda":
            torch.cuda.synchronize()

    # The baseline is taken before the first step, so that the peak counts what training needs
    # beyond the model: activations, gradients, optimiser state, method state built on the way.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()   # the build (a C x C graph at large C) may have peaked higher
        base = _rss_mb()
    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.steps):
        t = time.perf_counter()
        step(100 + i)
        times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss_mb() - base
    out = {"step_s": statistics.median(times), "peak_mb": max(peak, 0.0)}
    if args.profile:
        out["profile"] = profile_step(lambda: step(1000), args.profile)
    return out


def profile_step(step, top: int) -> list:
    """The `top` operators of one step by their own time, grouped by input shapes: [name,
    shapes, calls, self ms, share of the step's self time in %]."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    rows = prof.key_averages(group_by_input_shape=True)
    total = sum(r.self_cpu_time_total for r in rows) or 1.0
    rows = sorted(rows, key=lambda r: -r.self_cpu_time_total)[:top]
    return [[r.key, str(r.input_shapes), r.count, round(r.self_cpu_time_total / 1e3, 2),
             round(100.0 * r.self_cpu_time_total / total, 1)] for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[80], help="one or more sizes C")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1280)
    ap.add_argument("--hw", type=int, default=14)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--attention", type=int, default=512)
    ap.add_argument("--known", type=float, default=None, help="proportion of known labels")
    ap.add_argument("--positive-rate", type=float, default=None, help="P(label positive)")
    ap.add_argument("--backbone", default=None, help="put this backbone in the step (random "
                    "weights), e.g. resnet101")
    ap.add_argument("--freeze", default="hcp", help="the backbone's freeze policy")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds a method may take for all its steps at one size (CPU)")
    ap.add_argument("--max-mb", type=int, default=16000,
                    help="memory a method may use beyond the model at one size (CPU); 0: no limit")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print each method's N costliest operators of one step (by shape)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # subprocess worker
    args = ap.parse_args()
    if args.one:
        args.size = args.classes[0]
        print(json.dumps(measure(args.one, args)))
        return
    sizes = {}
    for classes in args.classes:
        args.size = classes
        results = {}
        for method in args.methods:
            if args.device != "cpu":
                results[method] = measure(method, args)
                continue
            # a fresh process per method, so that peak RSS is its own
            cmd = [sys.executable, __file__, "--one", method] + worker_args(sys.argv[1:], classes)
            results[method] = run_worker(cmd, args)
        sizes[classes] = report(results, args)
    if args.json:
        print(json.dumps(sizes[args.classes[0]] if len(sizes) == 1
                         else {str(c): r for c, r in sizes.items()}))


def worker_args(argv: list[str], classes: int) -> list[str]:
    """The worker's arguments: the parent's without --json, --methods and --classes (one size)."""
    out, skip = [], False
    for a in argv:
        if a.startswith("--"):
            skip = a in ("--methods", "--classes", "--json")
            if skip:
                continue
        elif skip:
            continue
        out.append(a)
    return out + ["--classes", str(classes)]


def run_worker(cmd: list[str], args) -> dict:
    """Run one method's measurement in its own process, under the memory and time limits; a
    failure comes back as {"failed": why}."""
    limit = int(args.max_mb) * 2**20

    def cap():  # the address space, with room for the interpreter and torch's own mappings
        resource.setrlimit(resource.RLIMIT_AS, (limit + 4 * 2**30, resource.RLIM_INFINITY))

    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                           preexec_fn=cap if args.max_mb else None)
    except subprocess.TimeoutExpired:
        return {"failed": f"did not finish {args.warmup + args.steps} steps in {args.timeout:g} s"}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1]
        if "alloc" in last.lower() or "memory" in last.lower() or r.returncode == -9:
            return {"failed": f"needs more than {args.max_mb} MB ({last[:120]})"}
        return {"failed": last[:200]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def report(results: dict, args) -> dict:
    """Print one size's table; return its JSON object."""
    ref = results.get("ssgrl")
    ref = ref if ref and "failed" not in ref else None
    inputs = (f"{args.backbone} (freeze {args.freeze}) on {args.image_size} px images"
              if args.backbone else f"maps {args.channels}x{args.hw}x{args.hw}")
    labels = (f"known {args.known or 0.3}, positive rate {args.positive_rate or 0.1}"
              if args.known is not None or args.positive_rate is not None else "dense labels")
    print(f"C = {args.size}, batch {args.batch}, {inputs}, {labels}, trunk D = {args.dim}, "
          f"device {args.device}, threads {torch.get_num_threads()}")
    print(f"{'method':<15} {'step (s)':>9} {'peak (MB)':>10} {'time/ssgrl':>11} {'mem/ssgrl':>10}")
    out = {}
    for method, r in results.items():
        if "failed" in r:
            out[method] = r
            print(f"{method:<15} cannot run: {r['failed']}")
            continue
        tr = r["step_s"] / ref["step_s"] if ref else float("nan")
        mr = r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] > 0 else float("nan")
        out[method] = {"time_ratio": round(tr, 3), "memory_ratio": round(mr, 3),
                       "step_s": round(r["step_s"], 4), "peak_mb": round(r["peak_mb"], 1)}
        print(f"{method:<15} {r['step_s']:9.3f} {r['peak_mb']:10.1f} {tr:11.2f} {mr:10.2f}")
    for method, r in results.items():
        if r.get("profile"):
            print(f"\n{method}: the costliest operators of one step (self time, share of it)")
            for name, shapes, calls, ms, share in r["profile"]:
                print(f"  {ms:8.1f} ms {share:5.1f}%  {calls:4d} x {name} {shapes}")
    return out


if __name__ == "__main__":
    main()
