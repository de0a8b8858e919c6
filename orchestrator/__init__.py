"""maectl: experiment YAMLs -> SLURM / Ray Train / local jobs, tracked in MLflow.

Import nothing heavy here: `maectl --help` must answer in well under a second.
"""

__version__ = "0.1.0"
