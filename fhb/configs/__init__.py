"""fhb's own yaml configs, shipped as package data.

* ``fithubert.yaml``: the published FitHuBERT configuration (HuBERT Base teacher).
* ``fitwav2vec2.yaml``: the same student distilled from wav2vec 2.0 Base.
* ``tiny.yaml``: a tiny student for tests and demos, matched to the tiny random teacher
  (``fhb.pipeline.teacher.save_random_checkpoint(path, "tiny")``: 3 layers, dim 64).

Read them with :func:`fhb.student.config.load_packaged_config` (``importlib.resources``), never
by a path relative to the source tree.
"""
