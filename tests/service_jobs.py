"""Module-level jobs for tests/test_worker_service.py: a worker service's workers import them by
name, so they cannot live in the test module (PYTHONPATH names this folder)."""

import os

from dpo_utils import results


def where(job):
    """The job, this process's parent's pid (a worker's: its pool's owner), its own pid, a
    variable of its environment and its working directory; one provenance entry recorded."""
    results.record_provenance("test", "where", str(job), False)
    return job, os.getppid(), os.getpid(), os.environ.get("SERVICE_TEST_MARK"), os.getcwd()


def fail(job):
    raise ValueError(f"job {job!r} failed on purpose")
