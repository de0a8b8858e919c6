"""The SLURM backend, as a small package:

    task.py     the task side: what submitit runs on every rank (SlurmTask), the torch.distributed
                variables, the warning-signal / requeue protocol
    cluster.py  what the cluster says: sinfo's partitions, scontrol/sacct job states -> JobState
    backend.py  SlurmBackend: pre-submit checks, the launch plan (submitit's parameters and the
                sbatch script it renders), launch, status, logs, cancel
"""

from .backend import SlurmBackend, array_folder, array_plan, executor_parameters, job_folder, task_environment
from .cluster import map_state, native_status, parse_sinfo, query_partitions
from .task import SlurmTask, distributed_env, master_port

__all__ = ["SlurmBackend", "SlurmTask", "array_folder", "array_plan", "distributed_env", "executor_parameters", "job_folder", "map_state", "master_port", "native_status",
           "parse_sinfo", "query_partitions", "task_environment"]
