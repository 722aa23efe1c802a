"""wav2vec 2.0-family building blocks shared by the teacher and the student.

One module per block, fairseq's parameter names, shapes in every docstring (``B x T x D``).
"""
