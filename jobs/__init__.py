"""Job entry points: one module per job, run as ``python -m jobs.<name> --ds YYYY-MM-DD``.

A job started by an Airflow task (``ecrec_lib.orchestration.run_job`` sets
``ECREC_PARENT_PID``) binds itself to that task process here, before the job module runs:
it dies with its task and takes its own subprocesses with it. Manual runs are unaffected.
"""

from ecrec_lib.orchestration import bind_to_parent

bind_to_parent()
