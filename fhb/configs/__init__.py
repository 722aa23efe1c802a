"""fhb's own yaml configs, shipped as package data.

* ``fithubert.yaml``: the published FitHuBERT configuration (HuBERT Base teacher).
* ``fitwav2vec2.yaml``: the same student distilled from wav2vec 2.0 Base.
* ``distilhubert.yaml``: DistilHuBERT as the published code trains it (its ``ex.yaml``): 2 layers
  initialised from the teacher, L1 + cosine on teacher layers 4/8/12.
* ``tiny.yaml``: a tiny student for tests and demos, matched to the tiny random teacher
  (``fhb.pipeline.teacher.save_random_checkpoint(path, "tiny")``: 3 layers, dim 64).

Read them with :func:`fhb.student.config.load_packaged_config` (``importlib.resources``), never
by a path relative to the source tree.
"""
