"""Deployment speed: predict throughput (from images, and through the feature cache), export
time, and the exported ONNX model's CPU latency per image beside PyTorch's, in one run.

    .venv/bin/python benchmarks/deploy_speed.py --checkpoint runs/X/best.pt \
        --images ../shared/data/coco128/images/val2017 [--threads 2] [--json]

Each number is the median of `--repeats` timed runs after one untimed warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", required=True, nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mlrpl.data.dataset import load_image
    from mlrpl.deploy.export import export_model, onnx_session
    from mlrpl.deploy.predict import Predictor, expand_inputs
    paths = [str(p) for p in expand_inputs(args.images)]
    pred = Predictor.from_checkpoint(args.checkpoint)
    n = len(paths)
    res: dict = {"images": n, "threads": args.threads, "image_size": pred.image_size,
                 "backbone": pred.cfg.model.backbone, "method": pred.model.method.name}

    # predict throughput: the whole path (decode, resize, backbone, head) at batch 32
    runs = timed(lambda: pred.predict_proba(paths, batch_size=32), max(1, args.repeats - 2))
    res["predict_images_per_s"] = n / statistics.median(runs)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        pred.predict_proba_cached(paths, cache_dir=cache)
        res["cache_build_s"] = time.perf_counter() - t0
        runs = timed(lambda: pred.predict_proba_cached(paths, cache_dir=cache), args.repeats)
        res["predict_cached_images_per_s"] = n / statistics.median(runs)

    # export time (includes the onnxruntime check on 8 real images)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rep = export_model(args.checkpoint, Path(tmp) / "onnx", images=paths[:8],
                           log=lambda *_: None)
        res["export_s"] = time.perf_counter() - t0
        res["export_max_abs_diff"] = rep["max_abs_diff"]
        sess = onnx_session(Path(tmp) / "onnx" / "model.onnx", threads=args.threads)
        x1 = pred.transform(load_image(paths[0])).unsqueeze(0)
        xb = torch.stack([pred.transform(load_image(p)) for p in paths[:16]])
        net = pred.net.eval()

        def torch_run(x):
            with torch.no_grad():
                net(x)

        def ort_run(x):
            sess.run(["probabilities"], {"image": x.numpy()})
        for name, x, per in (("batch1", x1, 1), ("batch16", xb, 16)):
            tt = timed(lambda: torch_run(x), args.latency_runs)
            to = timed(lambda: ort_run(x), args.latency_runs)
            res[f"torch_ms_per_image_{name}"] = 1000 * statistics.median(tt) / per
            res[f"onnx_ms_per_image_{name}"] = 1000 * statistics.median(to) / per
            res[f"onnx_over_torch_{name}"] = statistics.median(to) / statistics.median(tt)
    if args.json:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in res.items()}))
    else:
        for k, v in res.items():
            print(f"{k:>30}  {v:.4g}" if isinstance(v, float) else f"{k:>30}  {v}")
    return res


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
