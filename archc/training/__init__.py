"""The framework-free training kit (``kit``): run configuration, the schedule, data
sources and augmentation draws, checkpoints written atomically, resume checks, metric
logs. The trainers in each backend add only what is framework-specific.
"""
