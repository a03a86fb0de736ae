"""ALIGN-BENCH, GLSCL's cross-modal alignment benchmark: the ``align_bench`` dataset builder (the released layout,
or a mini bench generated from the shapes set) and the ``align_bench`` task.  Scores: :mod:`.scoring`."""
from lavis_glscl.align_bench import data, task  # noqa: F401  (registers the builder and the task)
