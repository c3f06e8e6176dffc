"""Using a trained model: prediction on images and folders (:mod:`.predict`), per-class decision
thresholds (:mod:`.thresholds`) and export for deployment (:mod:`.export`)."""
