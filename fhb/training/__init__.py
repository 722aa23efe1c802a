"""fhb.training: everything stage two trains with (torch lives here, not in `fhb.storage`).

The lake loader and its epoch planner, the optimiser, DDP helpers, a run's on-disk state, reading
a run's student back, and the `Trainer`. Imports `fhb.storage`, `fhb.student`, `fhb.pipeline`
and `fhb.nn`; never `fhb.stages`.
"""
