"""The framework-free training kit: ``kit`` holds the run configuration, the schedule,
data sources and augmentation draws, checkpoints written atomically, resume checks, metric
and TensorBoard logs, and the rules both trainers share (preprocessing, weight decay's
kernels, synthetic batches); ``loop`` is the one training loop (resume, cadence, logging,
evaluation, digests, final files) over a backend's :class:`loop.Engine`. The trainers in
each backend add only what is framework-specific.
"""
