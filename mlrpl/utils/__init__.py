"""Utilities every layer may use: writing files safely (:mod:`.files`), the library's logger and
progress lines (:mod:`.logs`, :mod:`.progress`), registries (:mod:`.registry`), optional
dependencies (:mod:`.optional`), process groups (:mod:`.dist`), the import graph and code digests
(:mod:`.codeinfo`) and the fault suite's kill points (:mod:`.faults`). Nothing here imports any
other part of the library but :mod:`mlrpl.errors` and :mod:`mlrpl.version`."""
