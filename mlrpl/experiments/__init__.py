"""Experiments over many runs: sweep configs (:mod:`.spec`), the sweep runner (:mod:`.sweep`),
the demo (:mod:`.demo`) and the tables and plots built from run directories (:mod:`.reports`)."""
