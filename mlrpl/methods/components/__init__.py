"""Building blocks that more than one method uses, each written once (the SARL trunk itself,
with its recipes and :func:`~mlrpl.models.sarl.trunk_for`, is in :mod:`mlrpl.models.sarl`):

* :mod:`~mlrpl.methods.components.transfer` -- what ``sst`` and ``hst`` share: the IST
  (intra-image co-occurrence) head, their config keys and the functions they take as hooks;
* :mod:`~mlrpl.methods.components.blending` -- what ``sarb`` and ``dsrb`` share: the blends, their
  config keys and the functions they take as hooks;
* :mod:`~mlrpl.methods.components.memory_bank` -- SST's per-class FIFO of features;
* :mod:`~mlrpl.methods.components.prototypes` -- k-means class prototypes from a pass over the data
  (:mod:`~mlrpl.methods.components.quadrant_prototypes`: DSRB's location-aware ones);
* :mod:`~mlrpl.methods.components.pseudo_labels` -- pseudo-label quality against hidden labels, and
  the score distributions SATL's thresholds come from.

No method inherits from a building block: each method class derives from
:class:`mlrpl.methods.base.Method` alone and names, in its class body, the shared functions it
takes as its hooks.
"""
