"""The training loop: explicit, one epoch at a time, the same on one CPU core or N GPUs.

    trainer = Trainer(cfg)          # builds data, partial labels, model, optimiser
    trainer.fit()                   # trains, evaluates every epoch, writes the run directory

Run directory: ``config.yaml`` (resolved), ``mask.npy`` + ``mask.provenance.json``,
``summary.csv`` (one row per epoch), ``train.log``, ``tb/`` (TensorBoard), ``last.pt``,
``best.pt``, ``metrics.json`` (last and best epoch).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from mlrpl.utils import dist, faults
from mlrpl.config import PATH_KEYS, resolved, to_yaml
from mlrpl.data.dataset import PRIOR_MEMO_KEY, FeatureDataset
from mlrpl.engine import rundir
from mlrpl.engine.checkpoint import (FORMAT, load_checkpoint, load_model_state, rng_state,
                                     set_rng_state)
from mlrpl.engine.evaluate import left_out_of_map, map_scope, predict_logits, score
from mlrpl.engine.experiment import (Experiment, MLRModel, build_backbone, build_method,
                                     build_model, check_evaluable, load_splits, make_dataset,
                                     make_partial, seeded_split, skipped_items)
from mlrpl.engine.runtime import (amp_dtype, epoch_seed, process_settings, seed_everything,
                                  select_device, to_device)
from mlrpl.errors import ConfigError, MlrplError
from mlrpl.utils.torchio import atomic_copy, atomic_save
from mlrpl.utils.logs import log_file
from mlrpl.methods import method_code_digest
from mlrpl.methods.base import EpochContext, eval_mode
from mlrpl.utils.optional import require
from mlrpl.plugins import build_plugins
from mlrpl.plugins.base import PluginContext, TrainEndContext
from mlrpl.utils.progress import progress
from mlrpl.version import __version__

log = logging.getLogger("mlrpl")


class TrainingError(MlrplError):
    """Training cannot go on (a non-finite loss, for example)."""


# ---- optimiser and schedule ----------------------------------------------------------------------
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
        # TensorBoard events: asked for (true) needs the package, one line now, before the run
        # starts; null writes them when the package is installed
        self.tensorboard = bool(cfg.train.tensorboard)
        if cfg.train.tensorboard:
            require("tensorboard", "tensorboard", "train.tensorboard=true",
                    "pass train.tensorboard=false")
        elif cfg.train.tensorboard is None:
            import importlib.util
            self.tensorboard = importlib.util.find_spec("tensorboard") is not None
        self.device = select_device(cfg.train.device)
        dist.init_from_env(self.device.type)
        self.rank, self.world = dist.rank(), dist.world_size()
        self.run_dir = Path(cfg.run.dir)
        self._fresh = False
        # The run directory is this run's alone for its whole life (rank 0 holds the lock for
        # every process of a data-parallel run); a second run on it is refused in one line.
        self.lock = rundir.RunLock(self.run_dir)
        try:
            if dist.is_main():
                self.lock.acquire()
                self._fresh = rundir.prepare_run_dir(self.run_dir, cfg.run.overwrite, resume)
            dist.barrier()
            with self.session():
                self._build(cfg, resume)
        except BaseException:
            self._remove_unstarted()
            self.lock.release()
            raise

    def close(self) -> None:
        """Release the run directory (``fit`` does it when it ends)."""
        self.lock.release()

    def _remove_unstarted(self):
        """A run that fails before its first checkpoint leaves nothing behind (nothing that
        blocks a rerun): its directory is removed when this invocation created it."""
        if dist.is_main() and self._fresh and not (self.run_dir / rundir.LAST).exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @contextlib.contextmanager
    def session(self):
        """Thread count, determinism and the run directory's log file, for the duration of a
        block: the process is left as it was found."""
        t = self.cfg.train
        logfile = self.run_dir / rundir.LOG if dist.is_main() else None
        with process_settings(t.threads, t.deterministic), log_file(logfile):
            yield

    def _build(self, cfg, resume: bool):
        self.config_dict = resolved(cfg)
        self.resume_changes = {}
        if resume and dist.is_main():
            self.resume_changes = self._check_resume_config()
        if dist.is_main():
            from mlrpl.utils.files import atomic_write_text
            atomic_write_text(self.run_dir / rundir.CONFIG, to_yaml(cfg))
            rundir.write_run_record(self.run_dir, method=cfg.method.name,
                                    method_code=method_code_digest(cfg.method.name),
                                    paths={k: OmegaConf.select(cfg, k) for k in PATH_KEYS})
        self.show_progress = {"auto": None, "always": True, "never": False}[cfg.train.progress]
        self.show_progress = self.show_progress if dist.is_main() else False

        seed_everything(cfg.seed)  # the same initial weights on every process
        train, val = load_splits(cfg)
        check_evaluable(val)  # before any caching or training
        if dist.is_main():
            partial, record = make_partial(cfg, train, self.run_dir)
        dist.barrier()
        if not dist.is_main():
            partial, record = make_partial(cfg, train, self.run_dir)
        train, partial, self.selection = self._hold_out_for_selection(train, partial)
        backbone = build_backbone(cfg)
        method = build_method(cfg, train.classes, backbone.out_channels, partial)
        model = build_model(cfg, backbone, method, train.classes).to(self.device)
        self.exp = Experiment(cfg, train, val, partial, record, model)
        self.model = model
        self.train_ds, self.val_ds = self._datasets()
        self.select_ds = None
        if self.selection is not None:
            self.select_ds, kept = make_dataset(cfg, self.selection, None, self.model.backbone,
                                                self.device, train=False,
                                                show_progress=self.show_progress)
            if kept is not None:
                self.selection = self.selection.subset(kept)
        self.plugins = build_plugins(cfg.plugins, PluginContext(
            train.num_classes, list(train.classes), self.exp.partial, int(cfg.seed),
            len(self.selection) if self.selection is not None else 0,
            train_items=list(self.exp.train.items),
            train_paths=[str(p) for p in self.exp.train.paths()]), model).to(self.device)
        self.ddp_model = model
        if self.world > 1:
            ignore = self_synced_buffers(model)
            if ignore:   # kept equal on every process by the module itself: not broadcast
                torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    model, ignore)
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
        self.stopped_early = False
        self.tb = None
        if dist.is_main():
            self._check_space()
        if resume:
            self._load_resume(self.run_dir / rundir.LAST)
        self._resumed = bool(resume)
        self._memoise_prior()
        self.record = self._record_inputs(method)
        if resume and dist.is_main():
            self._sync_run_files()
            self._record_resume()
        threads = torch.get_num_threads()
        log.info(f"mlrpl {__version__} | run {self.run_dir} | {self.world} process(es) on "
                 f"{self.device}, {threads} thread(s)"
                 f"{' (train.threads=null: all cores)' if cfg.train.threads is None else ''} | "
                 f"method {cfg.method.name} | {len(train)} train / {len(val)} eval "
                 f"images x {train.num_classes} classes | {record['known_entries']} of "
                 f"{partial.size} train labels known (p={cfg.data.known_proportion}, "
                 f"{cfg.data.protocol})")
        self.map_classes = len(self.exp.val.classes) - len(left_out_of_map(
            self.exp.val.labels, self.exp.val.classes))
        scope = map_scope(self.exp.val.labels, self.exp.val.classes)
        if scope:
            log.info(f"evaluation split: {scope}")

    # ---- which epoch is best -------------------------------------------------------------------
    def _hold_out_for_selection(self, train, partial):
        """With ``train.select=train_holdout``: (training images, their partial labels, the
        held-out LabelSet whose labels are the held-out images' partial labels), else
        (train, partial, None). The held-out images never reach the method or the optimiser."""
        t = self.cfg.train
        if t.select != "train_holdout":
            return train, partial, None
        keep, hold = seeded_split(len(train), t.select_holdout, self.cfg.data.split_seed)
        held = train.subset(hold).with_labels(partial[hold])
        if not (held.labels == 1).any() or not (partial[keep] != 0).any():
            raise ConfigError(f"bad value for 'train.select_holdout': {t.select_holdout}: the "
                              f"{len(hold)} held-out training images have no known positive (or "
                              f"nothing known is left to train on), so no epoch can be chosen on "
                              f"them; hold out a larger share or use train.select=eval")
        n_classes = int((held.labels == 1).any(0).sum())
        log.info(f"epoch selection: {len(hold)} of {len(train)} training images held out of "
                 f"training (train.select_holdout={t.select_holdout}, data.split_seed="
                 f"{self.cfg.data.split_seed}); the best epoch is the one with the highest mAP "
                 f"on their known labels ({n_classes} of {train.num_classes} classes have a "
                 f"known positive there)")
        return train.subset(keep), partial[keep], held

    def selection_note(self) -> str:
        """How the best epoch was chosen, in words (metrics.json, the console)."""
        if self.selection is not None:
            return (f"train_holdout: mAP on the known labels of {len(self.selection)} training "
                    f"images held out of training")
        return ("eval: mAP on the evaluation split, an optimistic choice (the epoch is chosen on "
                "the data it is scored on); train.select=train_holdout chooses it without them")

    # ---- resume -------------------------------------------------------------------------------
    def _check_resume_config(self) -> dict:
        """A resumed run keeps the settings its checkpoints were trained with: a change that
        would alter the run is refused (listing the keys); the accepted ones are returned, to be
        recorded in run.json."""
        saved = rundir.read_config(self.run_dir)
        if not saved:
            raise MlrplError(f"{self.run_dir / rundir.CONFIG}: the run's saved config is missing "
                             f"or damaged; it cannot be resumed as it was configured")
        refused, accepted = rundir.resume_changes(saved, self.config_dict)
        if refused:
            raise ConfigError(resume_refusal(self.run_dir, refused))
        return accepted

    def _record_resume(self):
        rec = rundir.read_run_record(self.run_dir)
        events = list(rec.get("resumes") or [])
        events.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "after_epoch": self.epoch,
                       "changed": {k: list(v) for k, v in self.resume_changes.items()}})
        rundir.write_run_record(self.run_dir, resumes=events)
        if self.resume_changes:
            log.info("resumed with changed settings (recorded in run.json): " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in self.resume_changes.items()))

    # ---- data ---------------------------------------------------------------------------------
    def _datasets(self):
        cfg, exp = self.cfg, self.exp
        kw = dict(backbone=self.model.backbone, device=self.device,
                  show_progress=self.show_progress)
        train_ds, kept = make_dataset(cfg, exp.train, exp.partial, train=True, **kw)
        self.skipped = {"train": skipped_items(exp.train, kept)}
        if kept is not None:
            exp.train, exp.partial = exp.train.subset(kept), exp.partial[kept]
        val_ds, kept = make_dataset(cfg, exp.val, None, train=False, **kw)
        self.skipped["eval"] = skipped_items(exp.val, kept)
        if kept is not None:
            exp.val = exp.val.subset(kept)
            check_evaluable(exp.val, "evaluation split without its unreadable images")
        return train_ds, val_ds

    def _record_inputs(self, method) -> dict:
        """What the run trained on beyond its config, in the run record and the log: the word
        vectors' source (file + sha256, or the encoder), the images skipped as unreadable."""
        from mlrpl.data.embeddings import embedding_source
        origin = getattr(method, "embedding_origin", None)
        extra = {"word_vectors": embedding_source(origin) if origin else None,
                 "skipped_images": self.skipped, "plugins": self.plugins.names(),
                 # train.threads=null leaves torch's default: every core of the machine
                 "threads": torch.get_num_threads(), "world_size": self.world,
                 # how the training labels were read, and the classes nothing can be learnt of
                 "labels": {k: self.exp.mask_record.get(k) for k in (
                     "classes_without_known_label", "classes_without_known_positive",
                     "voc_difficult", "label_reading")}}
        if origin:
            src = extra["word_vectors"]
            log.info("word vectors: " + (f"{src['path']} (sha256 {str(src['sha256'])[:12]})"
                                         if src["kind"] == "file" else
                                         f"sentence encoder {src['model']} (no vector file "
                                         f"covers these classes)"))
        prior = self.model.prior
        if prior is not None:
            from mlrpl.models.prior import imagenet_categories
            m = prior.matches(list(self.exp.train.classes), imagenet_categories())
            sizes = prior.regions.tolist()
            extra["prior"] = {"source": "imagenet", "encoder": "all-MiniLM-L6-v2",
                              "regions": sizes, "closest": prior.closest, "mixed": m,
                              "match": self.cfg.model.prior.match}
            if prior.kinds is not None:
                extra["prior"]["wordnet"] = prior.kinds
                alone = [c for c, n in prior.kinds.items() if not n]
                log.info(f"class prior: WordNet places ImageNet categories under "
                         f"{len(prior.kinds) - len(alone)} of {len(prior.kinds)} class names "
                         f"(model.prior.match=wordnet; their counts: 'prior.wordnet' in "
                         f"run.json)" + (f"; {len(alone)} use their name neighbours alone (e.g. "
                                         f"{', '.join(alone[:6])})" if alone else ""))
            classes = list(self.exp.train.classes)
            far = [c for c, sim in zip(classes, prior.trust_similarity(classes))
                   if sim < 0.5] if prior.closest else []
            where = ("the whole image" if sizes == [1.0] else
                     "windows of " + ", ".join(f"{r:g}" for r in sizes)
                     + " of the image's side (1: the whole image), each class's best window")
            log.info(f"class prior from the backbone's ImageNet classifier on {where} "
                     f"(model.prior.regions; the ImageNet names mixed into each class: 'prior' "
                     f"in run.json); {len(far)} of {len(m)} "
                     f"classes have no ImageNet name with similarity >= 0.5"
                     + (" and nothing under them in WordNet" if prior.kinds is not None else "")
                     + (f" (e.g. {', '.join(far[:6])}): the prior knows little of those"
                        if far else ""))
            extra["prior"]["trust"] = self._prior_trust(prior)
        if dist.is_main():
            if any(self.skipped.values()):
                from mlrpl.utils.files import atomic_write_text
                atomic_write_text(self.run_dir / "skipped_images.txt", "".join(
                    f"{split}\t{item}\n" for split, items in self.skipped.items()
                    for item in items))
            rundir.write_run_record(self.run_dir, **extra)
        return extra

    def _prior_trust(self, prior) -> dict:
        """``model.prior.trust=known_labels``: score each class's prior on the training split's
        known labels and set its trust (a fresh run; a resumed one keeps its checkpoint's). The
        table goes to run.json, the log and ``prior_trust.png``."""
        from mlrpl.models.prior_trust import measure_trust, plot_trust, trust_summary
        rule = self.cfg.model.prior.trust
        if rule == "none":
            prior.trust.fill_(1.0)
            return {"rule": "none"}
        if not self._resumed:
            prior.trust.fill_(1.0)
            scores, known = dist.rows_by_index(
                ((b["index"], o["prior_logits"].float(), b["target"].to(torch.int8))
                 for b, o in self._eval_batches(self.train_ds, "prior trust")),
                len(self.train_ds))
            sim = prior.trust_similarity(list(self.exp.train.classes))
            trust, table = measure_trust(scores.numpy(), known.numpy(), sim,
                                         list(self.exp.train.classes))
            prior.trust.copy_(torch.as_tensor(trust, dtype=prior.trust.dtype))
            self._trust_table = table
        table = getattr(self, "_trust_table", None)
        if table is None:   # resumed: the checkpoint's trust, without its measurements
            table = [{"class": k, "trust": round(float(t), 4)}
                     for k, t in zip(self.exp.train.classes, prior.trust.tolist())]
        else:
            log.info(trust_summary(table) + " (table: run.json 'prior.trust', prior_trust.png)")
            if dist.is_main():
                plot_trust(table, self.run_dir / "prior_trust.png")
        return {"rule": rule, "table": table}

    def _check_space(self):
        """Two checkpoints (and their temporary copies) must fit before the first epoch."""
        from mlrpl.utils.files import check_free_space
        n = sum(t.numel() * t.element_size() for t in self._model_state()[0].values())
        n += 2 * sum(p.numel() * p.element_size() for p in self.model.parameters()
                     if p.requires_grad)  # the optimiser's moments
        check_free_space(self.run_dir, 3 * n + (16 << 20), "checkpoints")

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
        if dist.is_main() and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.run_dir / rundir.TENSORBOARD))
        stop_at = cfg.train.epochs
        if cfg.train.stop_after_epochs is not None:
            stop_at = min(stop_at, self.epoch + int(cfg.train.stop_after_epochs))
        try:
            with self.session():
                while self.epoch < stop_at and not self.stopped_early:
                    self._run_epoch(self.epoch)
                if self.epoch >= cfg.train.epochs or self.stopped_early:
                    # the model keeps the weights the last checkpoint holds (EMA)
                    self.plugins.finalize(self.model)
        finally:
            if self.tb is not None:
                self.tb.close()
            self.lock.release()
        return self.final_metrics()

    def _run_epoch(self, epoch: int):
        cfg = self.cfg
        seed_everything(epoch_seed(cfg.seed, epoch, self.rank))
        self.model.method.on_epoch_start(self.epoch_context(epoch))
        self.plugins.on_epoch_start(self.epoch_context(epoch), self.model)
        t0 = time.time()
        terms = self.train_one_epoch(epoch)
        t1 = time.time()
        # Plug-ins choose the weights evaluated and checkpointed (EMA) until the epoch ends.
        with self.plugins.evaluation(self.model):
            self._finish_epoch(epoch, terms, t0, t1)

    def _finish_epoch(self, epoch: int, terms: dict, t0: float, t1: float):
        cfg = self.cfg
        final = {}
        if epoch + 1 == cfg.train.epochs and len(self.plugins):
            final = self.plugins.on_train_end(self.train_end_context(epoch), self.model)
        metrics, _ = self.evaluate(self.val_ds, self.exp.val.labels)
        chosen_on = metrics["mAP"]
        if self.select_ds is not None:
            sel, _ = self.evaluate(self.select_ds, self.selection.labels)
            metrics = {**metrics, "select_mAP": sel["mAP"]}
            chosen_on = sel["mAP"]
        t2 = time.time()
        self.epoch = epoch + 1
        row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[-1]["lr"]}
        if not self.sched_per_step and self.scheduler is not None:
            self.scheduler.step()
        row.update({f"loss_{k}": v for k, v in terms.items()})
        row.update(metrics)
        row.update(self.model.method.epoch_stats())
        row.update(self.plugins.epoch_stats())
        row.update(final)
        row.update({"time_train_s": round(t1 - t0, 3), "time_eval_s": round(t2 - t1, 3)})
        self.history.append(row)
        improved = chosen_on > self.best["mAP"]
        if improved:
            self.best = {"epoch": epoch, "mAP": chosen_on}
        patience = cfg.train.early_stop
        if patience is not None and epoch - self.best["epoch"] >= patience \
                and self.epoch < cfg.train.epochs:
            self.stopped_early = True
        if dist.is_main():
            rundir.write_summary(self.run_dir, self.history)
            ckpt = self._checkpoint(metrics)
            # last.pt first, then best.pt: a kill between the two leaves best.pt one epoch
            # behind, and then last.pt holds the best epoch, so resume can always repair it.
            atomic_save(ckpt, self.run_dir / rundir.LAST)
            faults.point("checkpoint.between_renames")
            if improved:
                atomic_copy(self.run_dir / rundir.LAST, self.run_dir / rundir.BEST)
            rundir.write_run_record(self.run_dir, checkpoints={
                "last": self.epoch, "best": self.best["epoch"] + 1})
            self._write_metrics_json()
            if self.tb is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
                        self.tb.add_scalar(k, v, epoch)
                self.tb.flush()
        log.info(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {terms.get('total', float('nan')):.4f}  "
                 f"mAP {metrics['mAP']:.2f}"
                 + (f" ({self.map_classes} of {len(self.exp.val.classes)} classes)"
                    if self.map_classes < len(self.exp.val.classes) else "")
                 + (f" (held-out train {metrics['select_mAP']:.2f})" if "select_mAP" in metrics
                    else "") + f"  CF1 {metrics['CF1']:.2f}  OF1 {metrics['OF1']:.2f}  "
                 f"({t1 - t0:.1f}s train, {t2 - t1:.1f}s eval)")
        if self.stopped_early:
            log.info(f"early stop after epoch {self.epoch}: no better epoch in the last "
                     f"{patience} (train.early_stop={patience}); best epoch "
                     f"{self.best['epoch'] + 1}, chosen on {self.selection_note().split(':')[0]}")
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
            seen = batch.get("features")
            batch = self.plugins.transform_batch(batch, epoch)
            if batch.get("features") is not seen:    # new maps (LogicMix): their own prior
                batch.pop(PRIOR_MEMO_KEY, None)
            with torch.autocast(device_type=dev_type, dtype=self.amp, enabled=self.amp is not None):
                outputs = self.ddp_model(batch)
            terms = method.loss(outputs, batch, epoch)
            if len(self.plugins):
                terms = self.plugins.loss(outputs, batch, epoch, dict(terms))
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
            faults.point("train.step")
            if self.sched_per_step and self.scheduler is not None:
                self.scheduler.step()
            method.update_state(outputs, batch)
            self.plugins.update_state(self.model, outputs, batch)
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

    def epoch_context(self, epoch: int) -> EpochContext:
        """What a method's ``on_epoch_start`` may use (see :class:`EpochContext`)."""
        return EpochContext(epoch=epoch, seed=int(self.cfg.seed), partial_labels=self.exp.partial,
                            show_progress=self.show_progress,
                            eval_batches=lambda desc: self._eval_batches(self.train_ds, desc))

    def train_end_context(self, epoch: int) -> TrainEndContext:
        """What a plug-in's ``on_train_end`` may use (see :class:`TrainEndContext`)."""
        return TrainEndContext(epoch=epoch, seed=int(self.cfg.seed),
                               partial_labels=self.exp.partial, show_progress=self.show_progress,
                               train_batches=lambda desc: self._eval_batches(self.train_ds, desc),
                               eval_batches=lambda desc: self._eval_batches(self.val_ds, desc),
                               eval_labels=self.exp.val.labels,
                               select_batches=None if self.select_ds is None else
                               lambda desc: self._eval_batches(self.select_ds, desc),
                               select_labels=None if self.selection is None else
                               self.selection.labels)

    def _memoise_prior(self) -> None:
        """With a class prior on cached feature maps, compute each map's untrusted prior logits
        once (they depend on nothing that trains) and keep them in its dataset, which hands them
        to the model in every batch: on cached maps the prior in windows otherwise costs more
        than the rest of a step, every epoch. Maps that a plug-in replaces lose them (see
        :meth:`train_one_epoch`); the fine-tuning regimes, whose maps change, never have them."""
        prior = self.model.prior
        if prior is None:
            return
        for ds in (self.train_ds, self.val_ds, self.select_ds):
            if not isinstance(ds, FeatureDataset) or ds.key != "features":
                continue
            bs, rows = int(self.cfg.train.eval_batch_size), []
            with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.amp,
                                                 enabled=self.amp is not None):
                for i in range(0, len(ds), bs):
                    maps = torch.from_numpy(np.asarray(ds.features[i:i + bs], dtype=np.float32))
                    rows.append(prior.untrusted(maps.to(self.device)).float().cpu())
            ds.prior_untrusted = torch.cat(rows) if rows else None

    @torch.no_grad()
    def _eval_batches(self, dataset, desc: str):
        """(batch, outputs) over this process's shard of ``dataset`` (no shuffling), the model in
        evaluation mode with rank 0's buffers (as DDP's next forward will have them)."""
        sampler = (DistributedSampler(dataset, shuffle=False, drop_last=False) if dist.is_dist()
                   else SequentialSampler(dataset))
        loader = DataLoader(dataset, batch_size=self.cfg.train.eval_batch_size, sampler=sampler,
                            num_workers=self.cfg.data.num_workers)
        dist.broadcast_buffers(self.model)
        with eval_mode(self.model):
            for batch in progress(loader, desc=desc, enable=self.show_progress):
                batch = to_device(batch, self.device)
                with torch.autocast(device_type=self.device.type, dtype=self.amp,
                                    enabled=self.amp is not None):
                    outputs = self.model(batch)
                yield batch, outputs

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
            "mlrpl_version": __version__,
            "config": self.config_dict,
            "classes": list(self.exp.train.classes),
            "encoding": "hcp",
            "preprocess": dict(bb.preprocess.to_dict()) if hasattr(bb.preprocess, "to_dict")
            else dict(bb.preprocess),
            "mask_hash": self.exp.mask_hash,
            "label_hash": self.exp.train.label_hash(),
            # where the data was, resolved: a checkpoint opened from another folder finds it
            "paths": {k: os.path.abspath(os.path.expanduser(v))
                      for k in ("data.root", "data.val_root")
                      if isinstance(v := OmegaConf.select(self.cfg, k), str) and v},
            "epoch": self.epoch,
            "model": state,
            "backbone_digest": digest,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "best": dict(self.best),
            "stopped_early": self.stopped_early,
            "metrics": {k: float(v) for k, v in metrics.items()},
            **({"plugins": self.plugins.state_dict()} if len(self.plugins) else {}),
        }

    def _load_resume(self, path: Path):
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt["mask_hash"] != self.exp.mask_hash:
            raise MlrplError(f"{path}: the checkpoint was trained on other partial labels "
                             f"(mask hash differs); resume needs the same data and mask")
        load_model_state(self.model, ckpt)
        if len(self.plugins):
            if "plugins" not in ckpt:
                raise MlrplError(f"{path}: the checkpoint holds no plug-in state but the run "
                                 f"lists plug-ins {self.plugins.names()}")
            self.plugins.load_state_dict(ckpt["plugins"])
            self.plugins.after_resume(self.model)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        if self.history and int(self.history[0].get("epoch", 1)) == 0:
            for row in self.history:  # checkpoints of earlier releases counted epochs from 0
                row["epoch"] = int(row["epoch"]) + 1
        self.best = dict(ckpt["best"])
        self.stopped_early = bool(ckpt.get("stopped_early", False))
        if dist.is_main():
            self._repair_best(ckpt)
        log.info(f"resumed {path} after epoch {self.epoch}")

    def _sync_run_files(self):
        """On resume, rewrite what a kill after the checkpoint writes may have left one epoch
        behind (summary.csv, metrics.json, the run record's checkpoints) from last.pt, the
        authority: a run killed after its final checkpoint has no epoch left to rewrite them."""
        rundir.write_summary(self.run_dir, self.history)
        self._write_metrics_json()
        rundir.write_run_record(self.run_dir, checkpoints={"last": self.epoch,
                                                           "best": self.best["epoch"] + 1})

    def _repair_best(self, last: dict):
        """best.pt must hold the epoch the run calls best. Checkpoints are written last.pt first,
        so after a kill best.pt can only lag behind an improved last epoch, whose weights last.pt
        holds: copy it. Any other mismatch is reported, never papered over."""
        path = self.run_dir / rundir.BEST
        want = int(last["best"]["epoch"]) + 1  # epochs done when the best checkpoint was saved
        if want < 1:
            return
        held = None
        if path.is_file():
            try:
                held = int(load_checkpoint(path)["epoch"])
            except MlrplError:
                held = None  # damaged: repaired below when possible
        if held == want:
            return
        if want == int(last["epoch"]):
            atomic_copy(self.run_dir / rundir.LAST, path)
            log.warning(f"{path} held {'no checkpoint' if held is None else f'epoch {held}'} but "
                        f"the run's best is epoch {want}, which last.pt holds (a run killed "
                        f"between the two writes): best.pt repaired")
            rundir.write_run_record(self.run_dir, checkpoints={"last": want, "best": want})
            return
        raise MlrplError(f"{path}: holds {'no checkpoint' if held is None else f'epoch {held}'} "
                         f"but the run's best epoch is {want}, whose weights are in no checkpoint "
                         f"(last.pt holds epoch {int(last['epoch'])}); the run directory was "
                         f"changed by hand? Remove best.pt to accept the loss, and resume")

    def final_metrics(self) -> dict:
        last = self.history[-1] if self.history else {}
        best = next((r for r in self.history if r["epoch"] == self.best["epoch"] + 1), {})
        val = self.exp.val
        return {"run_dir": str(self.run_dir), "epochs": self.epoch, "last": last, "best": best,
                # every epoch number counts from 1, as the console and summary.csv do
                "epoch_numbering": "from 1",
                "best_epoch": self.best["epoch"] + 1 if best else None,
                "best_chosen_on": self.selection_note(),
                "stopped_early": self.stopped_early,
                # classes without a positive in the evaluation split are left out of mAP, CP, CR
                "classes_left_out_of_mAP": left_out_of_map(val.labels, val.classes),
                "skipped_images": getattr(self, "skipped", {"train": [], "eval": []}),
                "word_vectors": getattr(self, "record", {}).get("word_vectors")}

    def _write_metrics_json(self):
        rundir.write_json(self.run_dir / rundir.METRICS, self.final_metrics())


def self_synced_buffers(model) -> list[str]:
    """The buffers of ``model`` (names as ``model.named_buffers`` gives them) of the submodules
    marked ``synced_by_itself``: they update from data gathered across processes, so that each
    process holds the same values without DDP broadcasting rank 0's before every forward."""
    return [f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules() if getattr(module, "synced_by_itself", False)
            for name, _ in module.named_buffers(recurse=False)]


def resume_refusal(run_dir, refused: dict) -> str:
    """The one-line refusal of a ``--resume`` that would change the run (``{key: (old, new)}``)."""
    changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:8])
    more = f" and {len(refused) - 8} more" if len(refused) > 8 else ""
    return (f"--resume: {run_dir} was trained with other settings than these ({changes}{more}); "
            f"a resumed run keeps the settings its checkpoints were trained with (it may change "
            f"only train.epochs under a step or constant schedule, and where or how fast it runs: "
            f"{', '.join(k.rstrip('.') for k in rundir.SAFE_KEYS)}); start a new run in another "
            f"run.dir to train with other settings")


def _worker_init(worker_id: int):
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
