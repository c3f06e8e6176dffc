"""The training loop: explicit, one epoch at a time, the same on one CPU core or N GPUs.

    trainer = Trainer(cfg)          # builds data, partial labels, model, optimiser
    trainer.fit()                   # trains, evaluates every epoch, writes the run directory

Run directory: ``config.yaml`` (resolved), ``mask.npy`` + ``mask.provenance.json``,
``summary.csv`` (one row per epoch), ``train.log``, ``tb/`` (TensorBoard), ``last.pt``,
``best.pt``, ``metrics.json`` (last and best epoch).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

import mlrpl
from mlrpl.config import resolved, to_yaml
from mlrpl.engine import dist
from mlrpl.engine.checkpoint import FORMAT, atomic_save, load_checkpoint, rng_state, set_rng_state
from mlrpl.engine.evaluate import predict_logits, score
from mlrpl.engine.experiment import (Experiment, MLRModel, build_backbone, build_method,
                                     load_splits, make_dataset, make_partial)
from mlrpl.errors import ConfigError, MlrplError
from mlrpl.progress import progress

log = logging.getLogger("mlrpl")


class TrainingError(MlrplError):
    """Training cannot go on (a non-finite loss, for example)."""


# ---- small pieces -------------------------------------------------------------------------------
def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device asks for CUDA but no GPU is visible; use train.device=cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", dist.local_rank())
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One seed per (experiment, epoch, process): resume reproduces every epoch exactly."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**63


def amp_dtype(name):
    return {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def prepare_run_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """Never clobber a run directory unless asked."""
    if path.exists() and any(path.iterdir()):
        if resume:
            return
        if not overwrite:
            raise ConfigError(f"run directory {path} already exists and is not empty; pass "
                              f"--resume to continue it, run.overwrite=true to replace it, or "
                              f"choose another run.dir")
        shutil.rmtree(path)
    elif resume:
        raise ConfigError(f"--resume: run directory {path} does not exist or is empty")
    path.mkdir(parents=True, exist_ok=True)


def setup_logging(run_dir: Path | None, main: bool) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    if not main:
        log.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    sh = logging.StreamHandler(sys.stdout)
    sh.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(sh)
    if run_dir is not None:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)


def build_optimizer(cfg, model: MLRModel):
    o = cfg.optim
    groups = []
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    if bb:
        groups.append({"params": bb, "lr": o.lr * o.backbone_lr_mult, "name": "backbone"})
    for g in model.method.param_groups():
        g = dict(g)
        g.setdefault("lr", o.lr)
        g.setdefault("name", "method")
        groups.append(g)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(cfg, optimizer, steps_per_epoch: int):
    """Returns (scheduler or None, steps per iteration?)."""
    s, epochs = cfg.sched, cfg.train.epochs
    if s.name == "none":
        return None, False
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, s.step_size, s.gamma), False
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1), s.min_lr), False
    max_lr = [g["lr"] for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=max(epochs, 1), steps_per_epoch=max(steps_per_epoch, 1),
        pct_start=s.pct_start), True


# ---- the trainer --------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg, resume: bool = False):
        self.cfg = cfg
        self.device = select_device(cfg.train.device)
        dist.init_from_env(self.device.type)
        self.rank, self.world = dist.rank(), dist.world_size()
        if cfg.train.threads:
            torch.set_num_threads(int(cfg.train.threads))
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.run_dir = Path(cfg.run.dir)
        if dist.is_main():
            prepare_run_dir(self.run_dir, cfg.run.overwrite, resume)
        dist.barrier()
        setup_logging(self.run_dir, dist.is_main())
        self.config_dict = resolved(cfg)
        if dist.is_main():
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.show_progress = {"auto": None, "always": True, "never": False}[cfg.train.progress]
        self.show_progress = self.show_progress if dist.is_main() else False

        seed_everything(cfg.seed)  # the same initial weights on every process
        train, val = load_splits(cfg)
        if dist.is_main():
            partial, record = make_partial(cfg, train, self.run_dir)
        dist.barrier()
        if not dist.is_main():
            partial, record = make_partial(cfg, train, self.run_dir)
        backbone = build_backbone(cfg)
        method = build_method(cfg, train.classes, backbone.out_channels, partial)
        model = MLRModel(backbone, method).to(self.device)
        self.exp = Experiment(cfg, train, val, partial, record, model)
        self.model = model
        self.train_ds, self.val_ds = self._datasets()
        self.ddp_model = model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=getattr(method, "ddp_find_unused_parameters", False))
        self.amp = amp_dtype(cfg.train.amp)
        self.optimizer = build_optimizer(cfg, model)
        self.steps_per_epoch = len(self._train_loader(0))
        self.scheduler, self.sched_per_step = build_scheduler(cfg, self.optimizer,
                                                              self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp == torch.float16 and self.device.type == "cuda")
        self.epoch = 0
        self.history: list[dict] = []
        self.best = {"epoch": -1, "mAP": -math.inf}
        self.tb = None
        if resume:
            self._load_resume(self.run_dir / "last.pt")
        log.info(f"mlrpl {mlrpl.__version__} | run {self.run_dir} | {self.world} process(es) on "
                 f"{self.device} | method {cfg.method.name} | {len(train)} train / {len(val)} eval "
                 f"images x {train.num_classes} classes | {record['known_entries']} of "
                 f"{partial.size} train labels known (p={cfg.data.known_proportion}, "
                 f"{cfg.data.protocol})")

    # ---- data ---------------------------------------------------------------------------------
    def _datasets(self):
        cfg, exp = self.cfg, self.exp
        kw = dict(backbone=self.model.backbone, device=self.device,
                  show_progress=self.show_progress)
        train_ds, kept = make_dataset(cfg, exp.train, exp.partial, train=True, **kw)
        if kept is not None:
            exp.train, exp.partial = exp.train.subset(kept), exp.partial[kept]
        val_ds, kept = make_dataset(cfg, exp.val, None, train=False, **kw)
        if kept is not None:
            exp.val = exp.val.subset(kept)
        return train_ds, val_ds

    def _train_loader(self, epoch: int) -> DataLoader:
        ds, bs = self.train_ds, self.cfg.train.batch_size
        if self.world > 1:
            sampler = DistributedSampler(ds, shuffle=True, seed=self.cfg.seed, drop_last=False)
            sampler.set_epoch(epoch)
            per_rank = math.ceil(len(ds) / self.world)
        else:
            g = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch, 0))
            sampler = RandomSampler(ds, generator=g)
            per_rank = len(ds)
        # Drop a ragged last batch (as the HCP recipe does) unless the split is tiny.
        drop_last = per_rank >= 2 * bs
        return DataLoader(ds, batch_size=bs, sampler=sampler, drop_last=drop_last,
                          num_workers=self.cfg.data.num_workers,
                          worker_init_fn=_worker_init, persistent_workers=False,
                          generator=torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch, self.rank)))

    # ---- loop ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        if dist.is_main() and cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / "tb"))
        stop_at = cfg.train.epochs
        if cfg.train.stop_after_epochs is not None:
            stop_at = min(stop_at, self.epoch + int(cfg.train.stop_after_epochs))
        try:
            while self.epoch < stop_at:
                self._run_epoch(self.epoch)
        finally:
            if self.tb is not None:
                self.tb.close()
        return self.final_metrics()

    def _run_epoch(self, epoch: int):
        cfg = self.cfg
        seed_everything(epoch_seed(cfg.seed, epoch, self.rank))
        self.model.method.on_epoch_start(self, epoch)
        t0 = time.time()
        terms = self.train_one_epoch(epoch)
        t1 = time.time()
        metrics, _ = self.evaluate(self.val_ds, self.exp.val.labels)
        t2 = time.time()
        self.epoch = epoch + 1
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[-1]["lr"]}
        if not self.sched_per_step and self.scheduler is not None:
            self.scheduler.step()
        row.update({f"loss_{k}": v for k, v in terms.items()})
        row.update(metrics)
        row.update(self.model.method.epoch_stats())
        row.update({"time_train_s": round(t1 - t0, 3), "time_eval_s": round(t2 - t1, 3)})
        self.history.append(row)
        improved = metrics["mAP"] > self.best["mAP"]
        if improved:
            self.best = {"epoch": epoch, "mAP": metrics["mAP"]}
        if dist.is_main():
            self._write_summary()
            ckpt = self._checkpoint(metrics)
            atomic_save(ckpt, self.run_dir / "last.pt")
            if improved:
                shutil.copyfile(self.run_dir / "last.pt", self.run_dir / ".best.pt.tmp")
                (self.run_dir / ".best.pt.tmp").replace(self.run_dir / "best.pt")
            self._write_metrics_json()
            if self.tb is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                        self.tb.add_scalar(k, v, epoch)
                self.tb.flush()
        log.info(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {terms.get('total', float('nan')):.4f}  "
                 f"mAP {metrics['mAP']:.2f}  CF1 {metrics['CF1']:.2f}  OF1 {metrics['OF1']:.2f}  "
                 f"({t1 - t0:.1f}s train, {t2 - t1:.1f}s eval)")
        dist.barrier()

    def train_one_epoch(self, epoch: int) -> dict:
        self.model.train()
        method = self.model.method
        loader = self._train_loader(epoch)
        sums: dict[str, torch.Tensor] = {}
        n_steps = 0
        dev_type = self.device.type
        for step, batch in enumerate(progress(loader, desc=f"epoch {epoch + 1}",
                                              enable=self.show_progress)):
            batch = to_device(batch, self.device)
            batch["epoch"] = epoch
            batch["step"] = step
            batch["steps_per_epoch"] = len(loader)
            with torch.autocast(device_type=dev_type, dtype=self.amp, enabled=self.amp is not None):
                outputs = self.ddp_model(batch)
            terms = method.loss(outputs, batch, epoch)
            total = sum(terms.values())
            finite = torch.tensor([float(torch.isfinite(total).item())], device=self.device)
            if self.world > 1:
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if finite.item() < 1:
                detail = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise TrainingError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} ({detail}); training "
                    f"stopped. The last good checkpoint is {self.run_dir / 'last.pt'} (epoch "
                    f"{self.epoch}); lower optim.lr, set optim.grad_clip, or check the data")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if self.cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]],
                    self.cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.sched_per_step and self.scheduler is not None:
                self.scheduler.step()
            if hasattr(method, "after_step"):
                method.after_step(outputs, batch, epoch)
            for k, v in list(terms.items()) + [("total", total)]:
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n_steps += 1
        keys = sorted(sums)
        vec = torch.stack([torch.as_tensor(sums[k], device=self.device) for k in keys] +
                          [torch.tensor(float(n_steps), device=self.device)]) if keys else \
            torch.tensor([float(n_steps)], device=self.device)
        vec = dist.all_reduce_sum(vec)
        n = max(vec[-1].item(), 1.0)
        return {k: vec[i].item() / n for i, k in enumerate(keys)}

    def predict_scores(self, dataset) -> np.ndarray:
        # Every process scores its shard with the model the checkpoint holds (rank 0's buffers).
        dist.broadcast_buffers(self.model)
        return predict_logits(self.model, dataset, self.cfg.train.eval_batch_size, self.device,
                              self.amp, self.cfg.data.num_workers, self.show_progress)

    def evaluate(self, dataset, labels) -> tuple[dict, np.ndarray]:
        scores = self.predict_scores(dataset)
        return score(scores, labels, self.cfg.eval.threshold, self.exp.train.classes), scores

    # ---- checkpoints ----------------------------------------------------------------------------
    def _model_state(self) -> tuple[dict, str | None]:
        state = self.model.state_dict()
        digest = None
        if self.cfg.model.freeze == "all" and self.cfg.model.pretrained not in (False, None):
            # The weights come back from their source; the digest proves they are the same.
            from mlrpl.data.cache import state_digest
            digest = state_digest(self.model.backbone)
            state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        return state, digest

    def _checkpoint(self, metrics: dict) -> dict:
        state, digest = self._model_state()
        bb = self.model.backbone
        return {
            "format": FORMAT,
            "mlrpl_version": mlrpl.__version__,
            "config": self.config_dict,
            "classes": list(self.exp.train.classes),
            "encoding": "hcp",
            "preprocess": dict(bb.preprocess.to_dict()) if hasattr(bb.preprocess, "to_dict")
            else dict(bb.preprocess),
            "mask_hash": self.exp.mask_hash,
            "label_hash": self.exp.train.label_hash(),
            "epoch": self.epoch,
            "model": state,
            "backbone_digest": digest,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "best": dict(self.best),
            "metrics": {k: float(v) for k, v in metrics.items()},
        }

    def _load_resume(self, path: Path):
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt["mask_hash"] != self.exp.mask_hash:
            raise MlrplError(f"{path}: the checkpoint was trained on other partial labels "
                             f"(mask hash differs); resume needs the same data and mask")
        load_model_state(self.model, ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        log.info(f"resumed {path} after epoch {self.epoch}")

    def _write_summary(self):
        cols: list[str] = []
        for row in self.history:
            cols += [k for k in row if k not in cols]
        tmp = self.run_dir / ".summary.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for row in self.history:
                w.writerow({k: _fmt(row.get(k, "")) for k in cols})
        tmp.replace(self.run_dir / "summary.csv")

    def final_metrics(self) -> dict:
        last = self.history[-1] if self.history else {}
        best = next((r for r in self.history if r["epoch"] == self.best["epoch"]), {})
        return {"run_dir": str(self.run_dir), "epochs": self.epoch, "last": last, "best": best,
                "best_epoch": self.best["epoch"]}

    def _write_metrics_json(self):
        tmp = self.run_dir / ".metrics.json.tmp"
        tmp.write_text(json.dumps(self.final_metrics(), indent=1, default=float))
        tmp.replace(self.run_dir / "metrics.json")


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _worker_init(worker_id: int):
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def load_model_state(model: MLRModel, ckpt: dict) -> None:
    """Load a checkpoint's weights; a frozen pretrained backbone is checked by its digest."""
    state = ckpt["model"]
    strict_keys = set(model.state_dict())
    if ckpt.get("backbone_digest"):
        from mlrpl.data.cache import state_digest
        if state_digest(model.backbone) != ckpt["backbone_digest"]:
            raise MlrplError("the frozen backbone's weights differ from those the checkpoint was "
                             "trained with (backbone digest mismatch); supply the same weights")
        strict_keys = {k for k in strict_keys if not k.startswith("backbone.")}
    missing = strict_keys - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise MlrplError(f"checkpoint does not fit the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state, strict=False)
