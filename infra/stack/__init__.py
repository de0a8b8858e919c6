"""maectl's development service stack: single-node SLURM (+ accounting), an S3 API server,
an MLflow tracking server and a Ray head, all on 127.0.0.1, state under infra/.state/.

Run through `infra/stack.sh {up|down|status|clean} [SERVICE...]`. Standard library only:
this runs before (and independently of) the project's own dependencies being importable.
"""
