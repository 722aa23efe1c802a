"""fhb: FitHuBERT distillation around a feature lake.

Stage one runs a fairseq teacher once and stores every layer in a Zarr lake; stage two trains
the FitHuBERT student from the cached targets; the export hands the student to S3PRL.
"""

__version__ = "0.1.0"
