"""The ``mlrpl`` command line: thin verbs over the library.

    mlrpl simulate | data inspect | data convert | metrics | ...

Every verb reports bad input as one line ``mlrpl: error: ...`` naming the file, line or field, and
exits with status 2 without writing anything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from mlrpl.errors import DataError, MlrplError


# ---- shared argument groups ---------------------------------------------------------------------
def _add_dataset_args(p: argparse.ArgumentParser, split_default: str | None = None):
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", required=True,
                   help="reader: voc2007, voc2012, coco, yolo, vg200, nuswide, csv, npy")
    g.add_argument("--root", required=True, help="dataset root (or the file, for csv/npy)")
    g.add_argument("--split", default=split_default, help="split, e.g. trainval, train2017")
    g.add_argument("--difficult", choices=["negative", "ignore"], default=None,
                   help="VOC: a class present only as difficult (default negative, the HCP rule)")
    g.add_argument("--encoding", choices=["hcp", "asl"], default=None,
                   help="label encoding of a dense csv/npy file or of --labels")
    g.add_argument("--classes", default=None, help="class-name file or YAML (csv/npy/yolo)")
    g.add_argument("--reader-option", "-O", action="append", default=[], metavar="KEY=VALUE",
                   help="extra reader option (repeatable), e.g. -O drop_empty=true")
    g.add_argument("--unknown", action="append", default=None, metavar="TOKEN",
                   help="csv: a cell token meaning unknown (repeatable; default: the blank cell), "
                        "e.g. --unknown '?' --unknown NaN")
    g.add_argument("--positive", action="append", default=None, metavar="TOKEN",
                   help="csv: a cell token meaning positive (repeatable; default 1)")
    g.add_argument("--negative", action="append", default=None, metavar="TOKEN",
                   help="csv: a cell token meaning negative (repeatable; default 0 and -1)")
    g.add_argument("--absent", choices=["negative", "unknown"], default=None,
                   help="csv list layout (image,labels): a class not listed is a negative "
                        "(default) or unknown")


def _parse_value(text: str):
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _read_from_args(args):
    from mlrpl.data import read_dataset
    opts = {}
    for kv in args.reader_option:
        if "=" not in kv:
            raise DataError(f"reader option {kv!r} is not KEY=VALUE", field="--reader-option")
        k, v = kv.split("=", 1)
        opts[k.strip()] = _parse_value(v)
    if args.difficult is not None:
        opts["difficult"] = args.difficult
    if args.encoding is not None and args.dataset in ("csv", "npy"):
        opts["encoding"] = args.encoding
    if args.classes is not None:
        opts["classes"] = args.classes
    for key in ("unknown", "positive", "negative", "absent"):
        value = getattr(args, key, None)
        if value is not None:
            if args.dataset != "csv":
                raise DataError(f"--{key} applies to csv files only", field=f"--{key}")
            opts[key] = value
    return read_dataset(args.dataset, args.root, args.split, **opts)


def _warn(message: str) -> None:
    """A warning line on stderr (what a verb noticed and did not stop for)."""
    print(f"mlrpl: warning: {message}", file=sys.stderr)


def _print_json(obj):
    print(json.dumps(obj, indent=2, default=float))


# ---- simulate -----------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from mlrpl.data.simulate import load_partial, provenance, simulate, write_outputs
    ls = _read_from_args(args)
    if args.import_file:
        partial = load_partial(args.import_file, ls.labels, args.import_encoding)
        record = provenance(partial, ls.labels, ls.classes, protocol="imported",
                            source=ls.source, imported_from=str(args.import_file))
    else:
        if args.protocol in ("hcp", "rps") and args.known is None:
            raise DataError(f"protocol {args.protocol!r} needs --known P (a proportion in (0, 1])",
                            field="--known")
        partial = simulate(ls.labels, args.protocol, p=args.known, seed=args.seed, n=args.n)
        record = provenance(partial, ls.labels, ls.classes, args.protocol, p=args.known,
                            seed=args.seed, n=args.n, source=ls.source)
    if "difficult" in ls.meta:  # VOC: what an entry present only as difficult became
        record["voc_difficult"] = ls.meta["difficult"]
    out, prov = write_outputs(partial, record, args.out, args.format, overwrite=args.force,
                              keep_old=args.force)
    print(f"wrote {out} ({partial.shape[0]} x {partial.shape[1]}, "
          f"{record['known_entries']} of {partial.size} entries known, "
          f"{record['known_positives']} known positives, "
          f"{record['images_without_known_label']} images without a known label, "
          f"{record['images_without_known_positive']} without a known positive) and {prov}")
    return 0


# ---- data ---------------------------------------------------------------------------------------
def _load_mask_for(ls, args):
    if not getattr(args, "mask", None):
        return ls.labels
    from mlrpl.data.simulate import load_partial
    return load_partial(args.mask, ls.labels, args.mask_encoding)


def cmd_data_inspect(args) -> int:
    from mlrpl.data.labelset import label_summary
    ls = _read_from_args(args)
    labels = _load_mask_for(ls, args)
    s = label_summary(labels, ls.classes)
    pc = s["per_class"]
    s["evaluable_classes"] = [c for c in ls.classes
                              if pc[c]["positive"] > 0 and pc[c]["negative"] > 0]
    s["classes_without_known_positive"] = [c for c in ls.classes if pc[c]["positive"] == 0]
    s["source"] = ls.source
    s["label_hash"] = ls.label_hash()
    if args.json:
        _print_json(s)
        return 0
    print(f"{ls.source}: {s['num_images']} images x {s['num_classes']} classes"
          + (f" (partial labels from {args.mask})" if args.mask else ""))
    if ls.meta.get("encoding_rule"):
        print(f"labels read as: {ls.meta['encoding_rule']}")
    if "difficult" in ls.meta:
        from mlrpl.data.readers.voc import difficult_rule
        print(difficult_rule(ls.meta["difficult"], "--difficult "))
    w = max(len(c) for c in ls.classes + ["class"])
    print(f"{'class':<{w}}  {'positive':>8}  {'negative':>8}  {'unknown':>8}  evaluable")
    for c, v in s["per_class"].items():
        ok = "yes" if c in s["evaluable_classes"] else "no"
        print(f"{c:<{w}}  {v['positive']:>8}  {v['negative']:>8}  {v['unknown']:>8}  {ok}")
    pos_per_image = (labels == 1).sum(1)
    print(f"known entries: {s['known_entries']} of {s['total_entries']} "
          f"({s['unknown_entries']} unknown)")
    print(f"evaluable classes (a known positive and a known negative): "
          f"{len(s['evaluable_classes'])} of {s['num_classes']}")
    print(f"positives per image: mean {pos_per_image.mean():.2f}, max {pos_per_image.max()}, "
          f"histogram {{{', '.join(f'{int(k)}: {int(v)}' for k, v in zip(*np.unique(pos_per_image, return_counts=True)))}}}")
    print(f"images without any positive: {s['images_without_known_positive']}")
    print(f"images without any known label: {s['images_without_known_label']}")
    if s["classes_without_known_positive"]:
        print(f"warning: {len(s['classes_without_known_positive'])} class(es) have no known "
              f"positive (nothing to learn them from, and no AP): "
              f"{', '.join(s['classes_without_known_positive'])}", file=sys.stderr)
    return 0


def cmd_data_convert(args) -> int:
    ls = _read_from_args(args)
    labels = _load_mask_for(ls, args)
    from mlrpl.utils.files import atomic_write, check_output
    out = check_output(args.out, args.force, "converted labels file")
    ls = ls.with_labels(labels)
    if out.suffix == ".csv":
        import csv
        from mlrpl.data.encoding import from_internal
        values = from_internal(ls.labels, args.to_encoding)

        def write(fh):
            w = csv.writer(fh)  # quoted where a name or path holds a comma or a quote
            w.writerow(["image", *ls.classes])
            for item, row in zip(ls.items, values):
                w.writerow([item, *(int(v) for v in row)])
        atomic_write(out, write, mode="w", keep_old=args.force, newline="")
    else:
        out = ls.save(out, encoding=args.to_encoding, keep_old=args.force)
    print(f"wrote {out} ({ls.num_items} x {ls.num_classes}, encoding {args.to_encoding})")
    return 0


# ---- metrics ------------------------------------------------------------------------------------
def _load_npy(path, what):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found", path=path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"not a readable .npy array ({e})", path=path) from None
    if not isinstance(arr, np.ndarray):          # a .npz archive read where a .npy is expected
        arr.close()
        raise DataError(f"a .npz archive, not a .npy array; expected a .npy {what} file",
                        path=path)
    return arr


def cmd_metrics(args) -> int:
    from mlrpl.data.encoding import infer_encoding, to_internal
    from mlrpl.metrics import compute_metrics, probabilities_to_logits, read_scores
    sc = read_scores(args.scores)
    scores, score_ids, score_classes = sc["scores"], sc["ids"], sc["classes"]
    label_ids = label_classes = None
    if Path(args.labels).suffix.lower() == ".npz":
        from mlrpl.data.labelset import LabelSet
        path = Path(args.labels)
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"not a readable .npz file ({e})", path=path) from None
        need = {"labels", "items", "classes", "encoding"}
        if not need <= keys:
            raise DataError(f"not a label file written by mlrpl data convert: it holds "
                            f"{sorted(keys)}, expected {sorted(need)}"
                            + (" (this is a scores file: give it as --scores)"
                               if "scores" in keys else ""), path=path)
        ls = LabelSet.load(path)
        labels, label_ids, label_classes = ls.labels, list(ls.items), list(ls.classes)
    else:
        raw = _load_npy(args.labels, "labels")
        enc = args.encoding or infer_encoding(raw, path=args.labels)
        labels = to_internal(raw, enc, path=args.labels)
    if score_classes is not None and label_classes is not None and score_classes != label_classes:
        raise DataError(f"the scores' classes {score_classes[:5]} differ from the labels' "
                        f"{label_classes[:5]} ({args.labels})", path=args.scores)
    if score_ids is not None and label_ids is not None and score_ids != label_ids:
        pos = {i: k for k, i in enumerate(score_ids)}
        labelled = set(label_ids)
        missing = [i for i in label_ids if i not in pos]
        extra = [i for i in score_ids if i not in labelled]
        if missing or extra or len(pos) != len(score_ids) or len(score_ids) != len(label_ids):
            first = (f"{missing[0]!r} is not scored" if missing else
                     f"{extra[0]!r} is not labelled" if extra else
                     "an image id is listed twice")
            raise DataError(f"the scores' image ids differ from the labels' ({args.labels}): "
                            f"{len(score_ids)} scored, {len(label_ids)} labelled, {first}; "
                            f"expected the same images", path=args.scores)
        scores = scores[[pos[i] for i in label_ids]]   # the same images in the labels' order
    if scores.shape != labels.shape:
        raise DataError(f"scores have shape {scores.shape} but labels have shape {labels.shape}",
                        path=args.scores)
    kind = args.scores_kind
    inside = bool(scores.size) and float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0
    if kind == "auto":
        if sc["kind"] is not None:
            kind = sc["kind"]
        elif inside:
            kind = "probabilities"
            print(f"mlrpl: note: every score in {args.scores} lies within [0, 1], so they are read "
                  f"as probabilities; pass --scores-kind logits if they are logits",
                  file=sys.stderr)
        else:
            kind = "logits"
    if kind == "probabilities":
        if not inside:
            raise DataError(f"--scores-kind probabilities, but the scores lie in "
                            f"[{scores.min():.4g}, {scores.max():.4g}]; expected values in "
                            f"[0, 1] (pass --scores-kind logits for logits)", path=args.scores)
        scores = probabilities_to_logits(scores)
    names = label_classes or score_classes
    if args.classes:
        from mlrpl.errors import require_file
        text = require_file(args.classes, "class-name file").read_text(encoding="utf-8",
                                                                       errors="replace")
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    thr = args.threshold
    if args.thresholds:
        if Path(args.thresholds).suffix.lower() == ".json":
            if names is None:
                raise DataError("a JSON thresholds file needs the class names: give --classes "
                                "or labels/scores as .npz", path=args.thresholds)
            from mlrpl.engine.evaluate import load_thresholds
            thr = load_thresholds(args.thresholds, names)
        else:
            thr = _load_npy(args.thresholds, "thresholds").astype(np.float64)
    m = compute_metrics(scores, labels, threshold=thr, class_names=names)
    if args.json:
        print(json.dumps({k: (None if v != v else round(float(v), 6)) for k, v in m.items()}))
    else:
        for k, v in m.items():
            print(f"{k:>10}  {v:7.2f}")
    return 0


# ---- train / eval / cache ---------------------------------------------------------------------------
def _config_from_args(args):
    from mlrpl.config import load_config
    base = None
    if getattr(args, "resume", False) and args.run_dir:
        saved = Path(args.run_dir) / "config.yaml"
        if not saved.is_file():
            raise MlrplError(f"{saved}: no saved config to resume from")
        import yaml
        try:
            base = yaml.safe_load(saved.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise MlrplError(f"{saved}: the run's saved config is damaged ({type(e).__name__}); "
                             f"it cannot be resumed as it was configured") from None
        if not isinstance(base, dict):
            raise MlrplError(f"{saved}: the run's saved config is damaged (expected a mapping, "
                             f"got {type(base).__name__}); it cannot be resumed")
        from mlrpl.config import with_earlier_values
        base = with_earlier_values(base)   # a run made before a key keeps its behaviour
        base.setdefault("train", {})["stop_after_epochs"] = None  # a new invocation, a new budget
        base.setdefault("run", {})["overwrite"] = False
        _refuse_method_change(args, base)
    overrides = list(args.overrides)
    if getattr(args, "run_dir", None):
        overrides.append(f"run.dir={args.run_dir}")
    return load_config(args.config, overrides, base=base)


def _refuse_method_change(args, saved: dict) -> None:
    """``--resume method.name=X`` on a run of another method: the trainer's comparison of the
    settings never runs (the other method's keys do not even parse), so say it here."""
    from mlrpl.engine.trainer import resume_refusal
    was = (saved.get("method") or {}).get("name", "pbce")
    for o in args.overrides:
        key, _, value = o.partition("=")
        if key.strip() == "method.name" and value.strip() != was:
            raise MlrplError(resume_refusal(args.run_dir, {"method.name": (was, value.strip())}))


def cmd_train(args) -> int:
    from mlrpl.config import to_yaml
    cfg = _config_from_args(args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from mlrpl.utils import dist
    from mlrpl.engine.trainer import Trainer
    try:
        trainer = Trainer(cfg, resume=args.resume)
        result = trainer.fit()
        main_process = dist.is_main()
    finally:
        dist.cleanup()
    if main_process and result.get("last"):
        last, best = result["last"], result["best"]
        chosen = result["best_chosen_on"].split(":")[0]
        print(f"done: {result['run_dir']}  last epoch ({result['epochs']}) mAP {last['mAP']:.2f}  "
              f"best epoch {result['best_epoch']} mAP {best['mAP']:.2f} "
              + ("(chosen on the evaluation split: optimistic)" if chosen == "eval" else
                 "(chosen on held-out training labels)")
              + ("; stopped early" if result.get("stopped_early") else ""))
    return 0


def cmd_eval(args) -> int:
    from mlrpl.engine.evaluate import evaluate_checkpoint
    result = evaluate_checkpoint(args.checkpoint, overrides=args.overrides, split=args.split,
                                 save_scores=args.save_scores, force=args.force, threshold=args.threshold,
                                 thresholds_file=args.thresholds,
                                 model_thresholds=args.model_thresholds)
    if args.json:
        print(json.dumps(result["metrics"]))
    else:
        print(f"{result['dataset']} ({result['num_images']} images)")
        if result.get("mAP_scope"):
            print(result["mAP_scope"])
        for k, v in result["metrics"].items():
            print(f"{k:>12}  {v:8.2f}")
    if args.save_scores:
        from mlrpl.metrics import scores_ids_path
        out = Path(args.save_scores)
        what = (f"{out} (logits, image ids and classes)" if out.suffix.lower() == ".npz" else
                f"{out} (logits) and {scores_ids_path(out)} (image ids, one a line)")
        print(f"wrote {what}; score them again with: mlrpl metrics --scores {out} --labels ...",
              file=sys.stderr)
    return 0


def cmd_cft(args) -> int:
    from mlrpl.engine.cft import cft_checkpoint
    r = cft_checkpoint(args.checkpoint, out=args.out, options=args.options, force=args.force)
    if args.json:
        print(json.dumps({k: r[k] for k in ("before", "after", "stats", "out")}))
    else:
        s = r["stats"]
        print(f"cft: {s['cft_classes_kept']} of {s['cft_classes_eligible']} eligible classes "
              f"re-fitted -> {r['out']}")
        for k in ("mAP", "CF1", "OF1"):
            print(f"{k:>12}  {r['before'][k]:8.2f} -> {r['after'][k]:8.2f}")
    return 0


def cmd_thresholds(args) -> int:
    from mlrpl.experiments.reports.distributions import export_thresholds
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    text = export_thresholds(args.checkpoint, out=args.out, plot=args.plot, classes=classes,
                             source=args.source, force=args.force)
    if args.out is None:
        print(text)
    return 0


def cmd_cache(args) -> int:
    from mlrpl.engine.evaluate import build_cache
    cfg = _config_from_args(args)
    for line in build_cache(cfg):
        print(line)
    return 0


def cmd_demo(args) -> int:
    from mlrpl.experiments.demo import run_demo
    return run_demo(data_root=args.data_root, out=args.out, overwrite=args.overwrite,
                    epochs=args.epochs)


# ---- sweep / report -----------------------------------------------------------------------------
def _csv_list(text, kind=str):
    if text is None:
        return None
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MlrplError(f"bad list {text!r}: expected comma-separated {kind.__name__} values") from None


def cmd_sweep(args) -> int:
    from mlrpl.experiments.sweep import run_sweep
    return run_sweep(args.config, overrides=args.overrides, out=args.out,
                     methods=_csv_list(args.methods), proportions=_csv_list(args.proportions, float),
                     seeds=_csv_list(args.seeds, int), reference=args.reference,
                     dry_run=args.dry_run, report=not args.no_report,
                     argv=["mlrpl", *sys.argv[1:]], reuse_stale=args.reuse_stale)


def cmd_report(args) -> int:
    from mlrpl.experiments.reports import build_report
    for path in build_report(args.path, reference=args.reference, run_plots=args.run_plots,
                             baseline=args.baseline, which=args.checkpoint,
                             plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


def _add_sweep_parsers(sub) -> None:
    sw = sub.add_parser("sweep", help="methods x known proportions x seeds, resumable "
                                      "(torchrun --nproc_per_node=N -m mlrpl sweep ... spreads runs)")
    sw.add_argument("--config", required=True, help="sweep YAML (configs/sweeps/*.yaml)")
    sw.add_argument("overrides", nargs="*", metavar="key=value",
                    help="experiment overrides for every run, e.g. train.epochs=5")
    sw.add_argument("--out", default=None, help="sweep directory (replaces the config's out)")
    sw.add_argument("--methods", default=None, help="comma-separated methods or labels of the config's entries (replaces 'methods')")
    sw.add_argument("--proportions", default=None, help="comma-separated known proportions")
    sw.add_argument("--seeds", default=None, help="comma-separated seeds")
    sw.add_argument("--reference", action="store_true", default=None,
                    help="add the published reference table to results.md")
    sw.add_argument("--no-report", action="store_true", help="skip results.csv/md and plots")
    sw.add_argument("--dry-run", action="store_true",
                    help="list the runs and what each would do (train, resume, skip), then exit")
    sw.add_argument("--reuse-stale", action="store_true",
                    help="keep finished and resumable runs whose method's code changed since "
                         "they were made (default: train them again, the old run moved aside)")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="rebuild tables and plots of a sweep or run directory")
    rp.add_argument("path", metavar="RUN_OR_SWEEP_DIR")
    rp.add_argument("--run-plots", action="append", default=None, metavar="RUN",
                    help="sweep: draw the run plots of this run (repeatable; default: each "
                         "method's run at the lowest proportion, first seed)")
    ref = rp.add_mutually_exclusive_group()
    ref.add_argument("--reference", action="store_true", default=None,
                     help="add the published results table (kept separate from ours)")
    ref.add_argument("--no-reference", dest="reference", action="store_false")
    rp.add_argument("--baseline", default=None, help="method the gains are measured from "
                                                     "(default pbce)")
    rp.add_argument("--checkpoint", choices=["last", "best"], default="last",
                    help="run: checkpoint of the per-class AP plot")
    rp.add_argument("--no-plots", action="store_true", help="tables only")
    rp.set_defaults(func=cmd_report)


# ---- deployment: predict, tune-thresholds, export, model bundle ------------------------------------
def cmd_predict(args) -> int:
    import csv
    import io

    from mlrpl.utils.files import atomic_write, disk_errors
    from mlrpl.deploy.predict import Predictor, decide, expand_inputs, skipped_summary

    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix not in (".csv", ".jsonl"):
            raise MlrplError(f"--out {out}: expected a .csv or .jsonl file")
        if out.is_dir():
            raise MlrplError(f"{out}: --out is a folder; give a .csv or .jsonl file name")
        if out.exists() and not args.force:
            raise MlrplError(f"{out}: refusing to overwrite an existing file (pass --force)")
    if args.topk is not None and args.topk < 1:
        raise MlrplError(f"--topk {args.topk}: expected a positive integer")
    skipped: list = []
    paths = expand_inputs(args.images, skipped=skipped)  # a missing path stops here
    pred = Predictor.from_checkpoint(args.checkpoint, "cpu", args.thresholds,
                                     args.backbone_weights, warn=_warn)
    note = skipped_summary(skipped)
    if note:
        print(f"mlrpl: note: {note}", file=sys.stderr)
    if args.save_attention and not pred.has_attention:
        raise MlrplError(f"--save-attention: method {pred.model.method.name!r} computes no "
                         f"per-class attention (the SARL-trunk methods do)")
    show = None if args.progress == "auto" else args.progress == "always"
    if args.cache:
        probs, errors = pred.predict_proba_cached(paths, batch_size=args.batch_size,
                                                  show_progress=show)
    else:
        probs, errors = pred.predict_proba([str(p) for p in paths], batch_size=args.batch_size,
                                           show_progress=show, on_error="skip")
    advice = pred.threshold_advice(probs)
    if advice:
        _warn(advice)
    classes, thr = pred.classes, pred.thresholds
    rows = []
    for i, p in enumerate(paths):
        if i in errors:
            continue
        rows.append((str(p), decide(probs[i], thr, classes, args.topk), probs[i]))
    fh = io.StringIO(newline="")
    if out is not None and out.suffix == ".jsonl":
        for path, labels, pr in rows:
            fh.write(json.dumps({"path": path, "labels": labels, "probabilities":
                                 {c: round(float(v), 6) for c, v in zip(classes, pr)}}) + "\n")
    else:
        w = csv.writer(fh)
        w.writerow(["path", "labels", *classes])
        for path, labels, pr in rows:
            w.writerow([path, ";".join(labels), *(f"{float(v):.6f}" for v in pr)])
    if out is None:
        sys.stdout.write(fh.getvalue())
    else:
        with disk_errors(out.parent):
            out.parent.mkdir(parents=True, exist_ok=True)
        data = fh.getvalue().encode("utf-8")
        atomic_write(out, lambda f: f.write(data), keep_old=args.force)
    if args.save_attention:
        # each image's predicted classes (its best class when none passes its threshold)
        n = sum(len(pred.save_attention(path, labels or [classes[int(np.argmax(pr))]],
                                        args.save_attention)) for path, labels, pr in rows)
        print(f"wrote {n} attention overlays to {args.save_attention}", file=sys.stderr)
    for _, msg in sorted(errors.items()):
        _warn(msg)
    print(f"predicted {len(rows)} of {len(paths)} images with {pred.thresholds_source} "
          f"thresholds" + (f" -> {out}" if out else "")
          + (f"; {len(errors)} unreadable (listed above)" if errors else ""), file=sys.stderr)
    return 1 if errors else 0


def cmd_tune_thresholds(args) -> int:
    from mlrpl.utils.files import check_output
    from mlrpl.deploy.thresholds import tune_checkpoint
    if args.out:
        check_output(args.out, args.force, "thresholds file")
    if args.min_positives < 1:
        raise MlrplError(f"--min-positives {args.min_positives}: expected at least 1")
    r = tune_checkpoint(args.checkpoint, split=args.split, overrides=args.overrides,
                        min_positives=args.min_positives, out=args.out,
                        backbone_weights=args.backbone_weights, force=args.force)
    res = r["result"]
    print(f"{r['dataset']}: {r['num_images']} images; per-class thresholds maximising F1 on "
          f"known labels (min {args.min_positives} known positives, else the global "
          f"{res['global_threshold']:.3f})")
    w = max(len(c) for c in r["classes"] + ["class"])
    print(f"{'class':<{w}}  threshold  source  F1@thr  F1@0.5  pos  neg")
    for row in res["per_class"]:
        print(f"{row['class']:<{w}}  {row['threshold']:9.3f}  {row['source']:<6}  "
              f"{row['f1']:6.3f}  {row['f1_at_0.5']:6.3f}  {row['positives']:>3}  "
              f"{row['negatives']:>3}")
    md, mt = r["metrics_default"], r["metrics_tuned"]
    print(f"on this split (optimistic: tuned on it): CF1 {md['CF1']:.2f} -> {mt['CF1']:.2f}, "
          f"OF1 {md['OF1']:.2f} -> {mt['OF1']:.2f} (threshold 0.5 -> tuned)")
    print(f"wrote {r['path']} (for the weights {r['model_digest'][:12]} of {args.checkpoint}: "
          f"predict, export and mlrpl.load use it only for this model)")
    return 0


def cmd_export(args) -> int:
    from mlrpl.deploy.export import export_model
    rep = export_model(args.checkpoint, args.out, args.format, thresholds=args.thresholds,
                       images=args.images, tolerance=args.tolerance, force=args.force,
                       opset=args.opset, backbone_weights=args.backbone_weights, warn=_warn)
    print(f"wrote {rep['out']}: {', '.join(rep['files'])} ({rep['seconds']:.1f}s; thresholds "
          f"{rep['thresholds']})")
    return 0


def cmd_model_bundle(args) -> int:
    from mlrpl.deploy.predict import write_bundle
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_name(ckpt.stem + ".bundle.pt")
    path = write_bundle(ckpt, out, force=args.force, backbone_weights=args.backbone_weights,
                        warn=_warn)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): opens offline, without the "
          f"original weight file")
    return 0


def _add_deploy_parsers(sub) -> None:
    thr_help = ("auto (default: the model's tuned or learned thresholds, else 0.5) | model | "
                "tuned | learned | a number | a thresholds file (.json/.npy)")
    bw_help = "the frozen backbone's weight file, when the checkpoint only references it"
    from mlrpl.deploy.predict import IMAGE_SUFFIXES
    pr = sub.add_parser(
        "predict", help="predict labels of images or folders",
        description="Predict the labels of images. A file named on the command line is always "
                    "read, whatever its suffix. A folder is walked recursively (sub-folders "
                    "too, symbolic links to folders not followed), in sorted path order, and "
                    "its files whose suffix is one of " + " ".join(IMAGE_SUFFIXES) + " in "
                    "any case (.JPG too) are read; its other files, and hidden files and "
                    "folders (a name starting with '.'), are skipped, and one line on stderr "
                    "counts them. An unreadable image is reported on stderr and left out "
                    "(exit status 1); the others are predicted.")
    pr.add_argument("--checkpoint", required=True, help="checkpoint or bundle")
    pr.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR",
                    help="image files and folders (walked recursively, see above)")
    pr.add_argument("--thresholds", default="auto", help=thr_help)
    pr.add_argument("--topk", type=int, default=None,
                    help="at most K labels per image (the highest that pass their threshold)")
    pr.add_argument("--out", default=None, help="preds.csv or preds.jsonl (default: CSV on stdout)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--progress", choices=["auto", "always", "never"], default="auto")
    pr.add_argument("--cache", action="store_true",
                    help="frozen backbone: keep the images' feature maps in model.cache_dir "
                         "(a second prediction of the same images skips the backbone)")
    pr.add_argument("--backbone-weights", default=None, help=bw_help)
    pr.add_argument("--force", action="store_true", help="overwrite --out")
    pr.add_argument("--save-attention", default=None, metavar="DIR",
                    help="SARL-trunk models: write <image>__<class>.png overlays of the attention "
                         "of each predicted class into DIR")
    pr.set_defaults(func=cmd_predict)

    tt = sub.add_parser("tune-thresholds", help="per-class thresholds maximising F1 on a "
                                                "labelled split (known labels only)")
    tt.add_argument("--checkpoint", required=True)
    tt.add_argument("overrides", nargs="*", metavar="key=value",
                    help="data overrides, e.g. data.val_root=val.csv")
    tt.add_argument("--split", default=None, help="labelled split (default: the evaluation split)")
    tt.add_argument("--min-positives", type=int, default=5,
                    help="fewer known positives than this: the global threshold (default 5)")
    tt.add_argument("--out", default=None, help="JSON (default: <checkpoint>.thresholds.json, "
                                                "read by predict/export/load)")
    tt.add_argument("--backbone-weights", default=None, help=bw_help)
    tt.add_argument("--force", action="store_true", help="overwrite --out")
    tt.set_defaults(func=cmd_tune_thresholds)

    ex = sub.add_parser("export", help="export a model for deployment (ONNX)")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--format", choices=["onnx", "torch-export"], default="onnx")
    ex.add_argument("--out", required=True,
                    help="output folder (new, empty, or an earlier export with --force)")
    ex.add_argument("--thresholds", default="auto", help=thr_help)
    ex.add_argument("--images", nargs="+", default=None,
                    help="real images to check the export on (default: the evaluation split)")
    ex.add_argument("--tolerance", type=float, default=1e-4,
                    help="largest allowed probability difference from PyTorch")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--backbone-weights", default=None, help=bw_help)
    ex.add_argument("--force", action="store_true",
                    help="replace an earlier export at --out: it is moved aside to "
                         "<out>.replaced-<time>, never deleted; a folder that mlrpl export did "
                         "not write is never replaced")
    ex.set_defaults(func=cmd_export)

    mo = sub.add_parser("model", help="model files: bundle")
    msub = mo.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    mb = msub.add_parser("bundle", help="a self-contained checkpoint (backbone weights and "
                                        "tuned thresholds inside; no optimiser state)")
    mb.add_argument("--checkpoint", required=True)
    mb.add_argument("--out", default=None, help="default: <checkpoint>.bundle.pt")
    mb.add_argument("--backbone-weights", default=None, help=bw_help)
    mb.add_argument("--force", action="store_true")
    mb.set_defaults(func=cmd_model_bundle)


# ---- annotation: suggest what to label next, merge the answers back in ----------------------------
def cmd_suggest(args) -> int:
    from mlrpl.deploy.suggest import suggest
    r = suggest(args.checkpoint, args.budget, strategy=args.strategy, per_image=args.per_image,
                seed=args.seed, out=args.out, force=args.force, thresholds=args.thresholds,
                overrides=args.overrides, backbone_weights=args.backbone_weights, warn=_warn)
    if r["note"]:
        print(f"mlrpl: note: {r['note']}", file=sys.stderr)
    rows = r["rows"]
    per = {None: "", "all": ", every unknown label of each image chosen"}.get(
        r["per_image"], f", at most {r['per_image']} per image")
    print(f"wrote {r['out']}: {len(rows)} entries of {r['asked_images']} images to annotate "
          f"(strategy {r['strategy']}{per}), chosen among the {r['unknown_entries']} unknown "
          f"entries of the {r['images']} training images")
    if len(rows) < args.budget:
        print(f"mlrpl: note: {args.budget - len(rows)} fewer than --budget {args.budget}: "
              + ("whole images only (--per-image all), and the next one did not fit"
                 if r["per_image"] == "all" else
                 f"no more unknown entries under --per-image {r['per_image']}"), file=sys.stderr)
    if r["strategy"] != "random":
        print(f"decision thresholds: {r['thresholds_source']}")
    if r.get("similarity_source"):
        print(f"class names related through {r['similarity_source']}")
        auc, n = r["names_auc"], r["names_checked"]
        if n == 0:
            print("mlrpl: note: no class has both a known positive and a known negative to check "
                  "the names against; related names not used (the ranking is class-balance's)",
                  file=sys.stderr)
        elif r["names_used"]:
            print(f"related names rank the known labels of the {n} classes with a known positive "
                  f"at ROC AUC {auc:.2f} (0.5: chance): used for the classes with fewer than 3")
        else:
            print(f"mlrpl: warning: related names rank the known labels of the {n} classes with a "
                  f"known positive at ROC AUC {auc:.2f} (0.5: chance): an image holding a class "
                  f"with a related name is {'no more' if auc >= 0.5 else 'less'} likely to hold "
                  f"the class here (photos of one subject each?); names not used, the ranking is "
                  f"class-balance's", file=sys.stderr)
    labels = r["label_file"] if r["dataset"] == "csv" else "LABELS.csv"
    import re
    stem = str(Path(labels).with_suffix(""))
    v = re.search(r"\.v(\d+)$", stem)        # labels.v2 -> labels.v3
    merged = f"{stem[:v.start()]}.v{int(v.group(1)) + 1}.csv" if v else f"{stem}.v2.csv"
    print(f"next: fill the value column of {r['out']} with 1 (present) or 0 (absent); a blank "
          f"stays unknown. Then: mlrpl data merge {labels} {r['out']} --out {merged}")
    if r["dataset"] != "csv":
        print(f"(the run read {r['dataset']!r} labels, not a CSV: merge into a CSV of its "
              f"training labels, e.g. written by mlrpl.data.merge.write_labels_csv)")
    return 0


def cmd_data_merge(args) -> int:
    from mlrpl.data.merge import merge_labels
    opts = {}
    for key in ("encoding", "unknown", "positive", "negative", "absent"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    r = merge_labels(args.labels, args.answers, args.out, force=args.force, **opts)
    files = f"{r['answers_files']} answers file{'s' if r['answers_files'] != 1 else ''}"
    extra = []
    if r["blank_answers"]:
        extra.append(f"{r['blank_answers']} answers blank (still unknown)")
    if r["agreed_with_known"]:
        extra.append(f"{r['agreed_with_known']} agreeing with labels already known")
    print(f"wrote {r['out']} ({r['layout']} layout, as {args.labels}): filled {r['filled']} "
          f"unknown entries from {files} ({r['filled_positive']} positive, "
          f"{r['filled_negative']} negative)" + (f"; {', '.join(extra)}" if extra else ""))
    print(f"unknown entries: {r['unknown_before']} -> {r['unknown_after']} of {r['entries']}; "
          f"train on it with data.root={r['out']}")
    return 0


def _add_data_merge_parser(dsub) -> None:
    dm = dsub.add_parser(
        "merge", help="fill a label CSV's unknown entries with answers (e.g. the ask file of "
                      "mlrpl suggest, filled in)",
        description="Fill the unknown entries of LABELS (a CSV in any layout: wide with blanks, "
                    "long image,label,value, list image,labels[,unknown]) with the answers of "
                    "ANSWERS (CSVs in any layout; values 1 = present, 0 or -1 = absent, blank = "
                    "still unknown) and write the result in the layout of LABELS to --out. An "
                    "answer that contradicts a known label is refused; the inputs are never "
                    "overwritten.")
    dm.add_argument("labels", metavar="LABELS", help="the label CSV (as training reads it)")
    dm.add_argument("answers", nargs="+", metavar="ANSWERS", help="one or more answers CSVs")
    dm.add_argument("--out", required=True, help="the merged label CSV (a new file)")
    dm.add_argument("--force", action="store_true",
                    help="replace an existing --out (moved aside to <out>.replaced-<time>)")
    dm.add_argument("--encoding", choices=["hcp", "asl"], default=None,
                    help="LABELS: read its cells in this integer encoding")
    dm.add_argument("--unknown", action="append", default=None, metavar="TOKEN",
                    help="LABELS: a cell token meaning unknown (repeatable; default blank)")
    dm.add_argument("--positive", action="append", default=None, metavar="TOKEN",
                    help="LABELS: a cell token meaning positive (repeatable; default 1)")
    dm.add_argument("--negative", action="append", default=None, metavar="TOKEN",
                    help="LABELS: a cell token meaning negative (repeatable; default 0 and -1)")
    dm.add_argument("--absent", choices=["negative", "unknown"], default=None,
                    help="LABELS in the list layout: what a class not listed is")
    dm.set_defaults(func=cmd_data_merge)


def _add_suggest_parser(sub) -> None:
    from mlrpl.deploy.suggest import STRATEGIES
    sg = sub.add_parser(
        "suggest", help="which unknown training labels to annotate next (an ask file)",
        description="Rank the unknown (image, class) entries of a run's training labels and "
                    "write the best --budget of them to --out as image,label,value (value blank, "
                    "for an annotator) with rank, score and reason. Fill the values in, then "
                    "merge them into the labels with mlrpl data merge and train again.")
    sg.add_argument("--checkpoint", required=True, help="the run's last.pt (or best.pt)")
    sg.add_argument("overrides", nargs="*", metavar="key=value",
                    help="data overrides, e.g. data.root=labels.v2.csv (rank the unknowns of "
                         "another version of the training labels)")
    sg.add_argument("--budget", required=True, type=int, help="how many entries to ask")
    sg.add_argument("--strategy", default="uncertainty", metavar="|".join(STRATEGIES),
                    help="random | uncertainty (default: probability closest to the class's "
                         "decision threshold) | class-balance (classes with the fewest known "
                         "positives first, round-robin) | related-classes (class-balance; a "
                         "class without known positives is looked for in the images holding "
                         "classes whose names are related to it) | expected-gain (expected mAP "
                         "gain)")
    sg.add_argument("--per-image", default=None, metavar="K|all",
                    help="at most K entries of one image, or 'all': every unknown label of the "
                         "images chosen (whole images, ranked by their entries' summed scores)")
    sg.add_argument("--seed", type=int, default=0, help="random: the draw's seed (default 0)")
    sg.add_argument("--thresholds", default="auto",
                    help="decision thresholds: auto (default: the model's tuned or learned ones, "
                         "else each class's operating point on the known training labels) | a "
                         "number | a thresholds file")
    sg.add_argument("--out", required=True, help="the ask file (.csv)")
    sg.add_argument("--force", action="store_true",
                    help="replace an existing --out (moved aside to <out>.replaced-<time>)")
    sg.add_argument("--backbone-weights", default=None,
                    help="the frozen backbone's weight file, when the checkpoint only "
                         "references it")
    sg.set_defaults(func=cmd_suggest)


# ---- parser -------------------------------------------------------------------------------------
def _train_help_lists() -> str:
    """The methods, plug-ins and preset configs, appended to ``mlrpl train --help`` (computed
    only when the help is shown: listing them imports the registries)."""
    import textwrap
    from mlrpl.methods import list_methods
    from mlrpl.plugins import list_plugins
    lines = ["", "methods (method.name=...):"]
    lines += textwrap.wrap(", ".join(list_methods()), 78, initial_indent="  ",
                           subsequent_indent="  ")
    lines += ["plug-ins (plugins=[{name: ...}]):"]
    lines += textwrap.wrap(", ".join(list_plugins()), 78, initial_indent="  ",
                           subsequent_indent="  ")
    presets = Path(__file__).resolve().parents[1] / "configs"
    if presets.is_dir():
        names = sorted(f.name for f in presets.glob("*.yaml"))
        lines += [f"preset configs (--config {presets}/NAME):"]
        lines += textwrap.wrap(", ".join(names), 78, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from mlrpl.version import __version__
    p = argparse.ArgumentParser(
        prog="mlrpl", description="Multi-label image recognition with partial labels: simulate "
        "partial labels, train and evaluate the published methods, predict and export.",
        epilog="Each verb has its own help: mlrpl VERB --help. Start with README.md.")
    p.add_argument("--version", action="version", version=f"mlrpl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="VERB")
    sub.required = True

    s = sub.add_parser("simulate", help="simulate partial labels (a mask + its provenance)")
    _add_dataset_args(s, "trainval")
    s.add_argument("--protocol", default="hcp", choices=["hcp", "rps", "fpc", "single-positive"])
    s.add_argument("--known", type=float, default=None, help="known proportion p in (0, 1]")
    s.add_argument("--n", type=int, default=None, help="fpc: positives and negatives per class")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["npy", "hcp"], default="npy",
                   help="npy: int8 matrix (+1/-1/0); hcp: comma-separated rows of 1,-1,0")
    s.add_argument("--out", required=True, help="mask file; provenance goes to <stem>.provenance.json")
    s.add_argument("--import", dest="import_file", default=None, metavar="FILE",
                   help="import a published mask (txt rows or .npy) instead of simulating")
    s.add_argument("--import-encoding", default="hcp", choices=["hcp", "asl"])
    s.add_argument("--force", action="store_true", help="overwrite existing output files")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("data", help="inspect or convert a dataset's labels")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    di = dsub.add_parser("inspect", help="per-class positive/negative/unknown counts")
    _add_dataset_args(di)
    di.add_argument("--mask", default=None, help="partial labels written by `mlrpl simulate`")
    di.add_argument("--mask-encoding", default="hcp", choices=["hcp", "asl"])
    di.add_argument("--json", action="store_true")
    di.set_defaults(func=cmd_data_inspect)
    dc = dsub.add_parser("convert", help="write the canonical form (.npz) or a dense .csv")
    _add_dataset_args(dc)
    dc.add_argument("--mask", default=None, help="partial labels written by `mlrpl simulate`")
    dc.add_argument("--mask-encoding", default="hcp", choices=["hcp", "asl"])
    dc.add_argument("--to-encoding", default="hcp", choices=["hcp", "asl"])
    dc.add_argument("--out", required=True, help="output .npz (canonical) or .csv (dense)")
    dc.add_argument("--force", action="store_true")
    dc.set_defaults(func=cmd_data_convert)
    _add_data_merge_parser(dsub)

    m = sub.add_parser("metrics", help="score saved predictions (logits or probabilities) "
                                       "against labels")
    m.add_argument("--scores", required=True,
                   help=".npy (N, C) scores (image ids read from <stem>.ids.txt beside it when "
                        "present), or the .npz of mlrpl eval --save-scores (scores, ids, "
                        "classes)")
    m.add_argument("--scores-kind", choices=["auto", "logits", "probabilities"], default="auto",
                   help="what the scores are; auto (default): what a .npz records, else "
                        "probabilities when every value lies within [0, 1] (a note says so), "
                        "else logits")
    m.add_argument("--labels", required=True,
                   help=".npy (N, C) labels, or the .npz of mlrpl data convert (its encoding, "
                        "classes and image ids are read from it; scores with ids are matched "
                        "to its images)")
    m.add_argument("--encoding", choices=["hcp", "asl"], default=None,
                   help="a .npy labels file's encoding; required when the file is ambiguous")
    m.add_argument("--threshold", type=float, default=0.5,
                   help="probability threshold (default 0.5, whatever --scores-kind)")
    m.add_argument("--thresholds", default=None,
                   help="per-class probability thresholds: .npy (C,) or a JSON {class: t} "
                        "(with class names)")
    m.add_argument("--classes", default=None, help="class names, one per line (for warnings)")
    m.add_argument("--json", action="store_true", help="print one JSON object (percentages)")
    m.set_defaults(func=cmd_metrics)

    t = sub.add_parser("train", help="train a model (torchrun --nproc_per_node=N -m mlrpl train ...)")
    t.add_argument("--config", default=None, help="YAML config (defaults: the built-in schema)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    t.add_argument("--run-dir", default=None, help="shorthand for run.dir=...")
    t.add_argument("--resume", action="store_true", help="continue the run in run.dir from last.pt")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=cmd_train)
    t.format_help = lambda: argparse.ArgumentParser.format_help(t) + _train_help_lists()

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data overrides, e.g. data.val_split=test")
    e.add_argument("--split", default=None, help="evaluate this split of the dataset instead")
    e.add_argument("--threshold", type=float, default=None, help="probability threshold")
    e.add_argument("--thresholds", default=None,
                   help="per-class thresholds: a .npy (C,) or a JSON {class: threshold}")
    e.add_argument("--model-thresholds", action="store_true",
                   help="the per-class thresholds saved with the model (satl)")
    e.add_argument("--save-scores", default=None, metavar="FILE",
                   help="write the logits (N, C) with their images' ids: FILE.npy and "
                        "FILE.ids.txt beside it (one id a line, same order), or one FILE.npz "
                        "(scores, ids, classes, kind); both read by mlrpl metrics")
    e.add_argument("--force", action="store_true",
                   help="overwrite existing --save-scores files")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    th = sub.add_parser("thresholds", help="export a model's learned per-class thresholds (SATL) "
                        "as JSON and plot its score distributions")
    th.add_argument("--checkpoint", required=True)
    th.add_argument("--out", default=None, help="per-class JSON (default: print it)")
    th.add_argument("--plot", default=None, help="PNG of the score histograms with the thresholds")
    th.add_argument("--classes", default=None,
                    help="comma-separated classes to plot (default: a few, frequent to rare)")
    th.add_argument("--source", default=None, help="score source to plot (cls, intra, inter)")
    th.add_argument("--force", action="store_true", help="overwrite existing output files")
    th.set_defaults(func=cmd_thresholds)

    cf = sub.add_parser("cft", help="category-wise fine-tuning of a checkpoint's final layer "
                        "(each class re-fitted on known labels, kept where its held-out AP "
                        "improves)")
    cf.add_argument("--checkpoint", required=True)
    cf.add_argument("--out", default=None, help="the new checkpoint (default: cft.pt beside it)")
    cf.add_argument("options", nargs="*", metavar="key=value",
                    help="keys of the cft plug-in, e.g. steps=200 select=train_holdout")
    cf.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    cf.add_argument("--json", action="store_true")
    cf.set_defaults(func=cmd_cft)

    c = sub.add_parser("cache", help="compute and store the frozen backbone's feature maps")
    c.add_argument("--config", default=None)
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=cmd_cache, run_dir=None, resume=False)

    dm = sub.add_parser("demo", help="the demo on COCO128 at 30%% known: pbce, pbce with the "
                                     "ImageNet class prior, 100%% known, a random backbone")
    dm.add_argument("--data-root", default=None,
                    help="folder holding coco128/ (default: $MLRPL_DATA)")
    dm.add_argument("--out", default="runs/demo", help="where the runs and the plot go")
    dm.add_argument("--epochs", type=int, default=None)
    dm.add_argument("--overwrite", action="store_true", help="replace an earlier demo's runs")
    dm.set_defaults(func=cmd_demo)

    _add_sweep_parsers(sub)
    _add_deploy_parsers(sub)
    _add_suggest_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mlrpl.utils.logs import console
    # a verb whose stdout is its result (JSON, or predictions without --out) logs on stderr
    console(to_stderr=bool(getattr(args, "json", False))
            or (args.command == "predict" and not getattr(args, "out", None)))
    try:
        return int(args.func(args) or 0)
    except MlrplError as e:
        # one line, whatever the message holds (a wrapped library message, say)
        print("mlrpl: error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlrpl: interrupted; {_INTERRUPTED.get(args.command, _INTERRUPTED[None])}",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlrpl predict ... | head`: the reader left, nothing to report
        try:
            sys.stdout = open(os.devnull, "w")  # no second error when Python flushes stdout
        except OSError:
            pass
        return 141


# What an interrupted verb left (every output is written atomically: nothing half-written).
_INTERRUPTED = {
    None: "nothing was half-written (outputs are written whole or not at all)",
    "train": "the run directory keeps its last finished epoch; continue it with "
             "`mlrpl train --resume --run-dir DIR`",
    "sweep": "finished runs are kept; the same command skips them and resumes the others",
}


if __name__ == "__main__":
    raise SystemExit(main())
