"""Published averages of MLR-PL methods, kept as data for reference tables.

Source: Wang, Wan, Xiang, Zeng, *Saliency Regularization for Self-Training with Partial
Annotations*, ICCV 2023, Table 1 (copied there from the original SST / SARB / HST papers "following
[SST, SARB]"; its HST and "SARB*" rows are the arXiv versions of HST and DSRB). The SST row is
independently confirmed by https://www.wizwand.com/paper/68fa6bf61e209131cea3147b. The same
table, with its caveats: docs/methods/README.md#published-averages.

Every number is the mean over known-label proportions 10%, 20%, ..., 90% of a ResNet-101 trained
on the full dataset under the HCP partial-label protocol, evaluated on the official test split,
best epoch on that split. They are **not comparable** with our sweeps (other backbone, other data
sizes, a frozen backbone, fewer proportions); they are shown beside them, never mixed in.

    >>> PUBLISHED["SST"]["MS-COCO"]["mAP"]
    76.7
"""
from __future__ import annotations

SOURCE = ("Wang et al., Saliency Regularization for Self-Training with Partial Annotations, "
          "ICCV 2023, Table 1 (averages copied from the SST, SARB and HST papers; HST and DSRB "
          "in their arXiv versions)")

TITLE = "Published (ResNet-101, full datasets, HCP protocol) — not comparable with the numbers above"

DATASETS = ("MS-COCO", "VG-200", "VOC 2007")
METRICS = ("mAP", "OF1", "CF1")

# method -> (our registry name or None, description, {dataset: (mAP, OF1, CF1)})
_ROWS = {
    "SSGRL": ("ssgrl", "full-label method, unknown labels ignored",
              {"MS-COCO": (74.1, 73.9, 68.1), "VG-200": (39.7, 37.8, 26.1),
               "VOC 2007": (89.5, 87.7, 84.5)}),
    "GCN-ML": (None, "full-label method, unknown labels ignored",
               {"MS-COCO": (74.4, 73.1, 68.4), "VG-200": (39.3, 38.7, 25.6),
                "VOC 2007": (88.9, 87.3, 84.6)}),
    "PLCL": (None, "Durand et al. 2019 partial loss + curriculum (re-run by the ICCV'23 authors)",
             {"MS-COCO": (75.5, 74.9, 70.2), "VG-200": (44.1, 45.8, 39.3),
              "VOC 2007": (92.4, 88.3, 86.0)}),
    "SPLC": (None, "",
             {"MS-COCO": (74.9, 68.1, 66.6), "VG-200": (45.1, 43.9, 41.1),
              "VOC 2007": (90.4, 83.2, 81.6)}),
    "CSL": (None, "Ben-Baruch et al., selective loss",
            {"MS-COCO": (76.3, 75.1, 71.5), "VG-200": (46.0, 54.0, 48.0),
             "VOC 2007": (91.7, 85.9, 84.1)}),
    "SST": ("sst", "",
            {"MS-COCO": (76.7, 75.8, 71.2), "VG-200": (41.8, 39.9, 30.8),
             "VOC 2007": (90.4, 88.2, 85.6)}),
    "HST": ("hst", "arXiv version",
            {"MS-COCO": (77.9, 76.7, 72.6), "VG-200": (44.8, 46.3, 37.9),
             "VOC 2007": (90.9, 88.4, 86.1)}),
    "SARB": ("sarb", "",
             {"MS-COCO": (77.9, 76.5, 72.2), "VG-200": (45.6, 45.0, 37.4),
              "VOC 2007": (90.7, 88.4, 85.9)}),
    "DSRB": ("dsrb", "arXiv version (\"SARB*\")",
             {"MS-COCO": (78.4, 76.8, 72.7), "VG-200": (46.0, 45.1, 37.7),
              "VOC 2007": (91.5, 88.3, 86.0)}),
    "SR": (None, "saliency-regularised self-training (ICCV'23)",
           {"MS-COCO": (81.0, 79.0, 75.7), "VG-200": (49.2, 51.4, 45.1),
            "VOC 2007": (93.7, 88.9, 86.2)}),
}

#: ``PUBLISHED[method][dataset][metric]`` -> average over proportions 10%..90% (percent).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    m: {d: dict(zip(METRICS, v)) for d, v in row[2].items()} for m, row in _ROWS.items()}

#: Our method name (registry) -> the published row it corresponds to.
OUR_NAMES: dict[str, str] = {row[0]: m for m, row in _ROWS.items() if row[0]}

NOTES: dict[str, str] = {m: row[1] for m, row in _ROWS.items() if row[1]}


def dataset_of(name: str | None) -> str | None:
    """The published dataset that a reader name / data root most resembles (for highlighting).

    >>> dataset_of("coco"), dataset_of("voc2007"), dataset_of("yolo")
    ('MS-COCO', 'VOC 2007', None)
    """
    n = (name or "").lower()
    if "coco" in n:
        return "MS-COCO"
    if "voc" in n:
        return "VOC 2007"
    if "vg" in n:
        return "VG-200"
    return None


def published_markdown(our_methods=(), dataset: str | None = None) -> str:
    """The reference table as Markdown: one row per published method, ``mAP / OF1 / CF1``.

    `our_methods` (registry names) are marked; `dataset` (one of :data:`DATASETS`) puts the
    column of the paper dataset closest to ours first."""
    cols = list(DATASETS)
    if dataset in cols:
        cols.remove(dataset)
        cols.insert(0, dataset)
    ours = {OUR_NAMES[m]: m for m in our_methods if m in OUR_NAMES}
    lines = [f"## {TITLE}", "",
             "Average over known proportions 10%, 20%, …, 90% (percent), `mAP / OF1 / CF1`, "
             "ResNet-101 fine-tuned on the whole dataset, best epoch on the test split. "
             "Different backbone, data size, proportions and epoch selection from the sweep "
             "above: a reference for orders of magnitude only, never a comparison.", "",
             f"Source: {SOURCE}.", "",
             "| method | " + " | ".join(cols) + " | in this sweep | note |",
             "|---|" + "---|" * len(cols) + "---|---|"]
    for m in _ROWS:
        cells = [" / ".join(f"{PUBLISHED[m][d][k]:.1f}" for k in METRICS) for d in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {ours.get(m, '')} | "
                     f"{NOTES.get(m, '')} |")
    return "\n".join(lines) + "\n"
