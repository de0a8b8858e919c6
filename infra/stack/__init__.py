"""maectl's development service stack: single-node SLURM (+ accounting), an S3 API server,
an MLflow tracking server and a Ray head, all on 127.0.0.1, state under infra/.state/; beside
them a 3-node SLURM cluster (slurm_mn.py) and a 2-node Ray cluster (ray_mn.py) on this host.

Run through `infra/stack.sh {up|down|status|clean} [SERVICE...]`. Standard library only:
this runs before (and independently of) the project's own dependencies being importable.
"""
