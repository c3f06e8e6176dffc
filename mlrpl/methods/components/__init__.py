"""Building blocks that more than one method uses, each written once:

* :mod:`~mlrpl.methods.components.sarl` -- the base of the methods on the SARL trunk;
* :mod:`~mlrpl.methods.components.transfer` -- the base of ``sst`` and ``hst``;
* :mod:`~mlrpl.methods.components.ist` -- the intra-image co-occurrence head and its scores;
* :mod:`~mlrpl.methods.components.memory_bank` -- SST's per-class FIFO of features;
* :mod:`~mlrpl.methods.components.prototypes` -- k-means class prototypes from a pass over the data;
* :mod:`~mlrpl.methods.components.distributions` -- score distributions and their thresholds;
* :mod:`~mlrpl.methods.components.pseudo_labels` -- pseudo-label quality against hidden labels.
"""
