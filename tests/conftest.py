import os

# Ray: no auth token written to ~/.ray, and the classic (quiet) output engine.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    """A local Ray whose workers append to a training log (workers inherit the driver's environment)."""
    import ray

    from orchestrator.trial import TRAINING_LOG

    path = tmp_path_factory.mktemp("log") / "trainings.jsonl"
    os.environ[TRAINING_LOG] = str(path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield path
    ray.shutdown()
    del os.environ[TRAINING_LOG]


from tests.s3_helpers import s3  # noqa: E402, F401 - the session's moto server (S3), for any test that asks
