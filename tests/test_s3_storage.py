"""Sweep storage on S3 (a local moto server): what is checked before launch, and storage's own writes."""

from __future__ import annotations

import pytest

from orchestrator import fs
from orchestrator.dense_cache import DenseStore
from orchestrator.cli import main
from trainables.layout import DenseLayout


def test_a_storage_uri_with_credentials_is_refused_without_repeating_them(s3, capsys):
    for uri in (f"s3://{s3.key_id}:{s3.secret}@{s3.bucket}/lth",
                f"s3://{s3.bucket}/lth?access_key={s3.key_id}&secret_key={s3.secret}"):
        with pytest.raises(fs.StorageError, match="AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY") as error:
            fs.check_storage(uri)
        assert s3.secret not in str(error.value) and "\n" not in str(error.value)


def test_reachable_storage_with_good_keys_passes_and_leaves_nothing(s3):
    fs.check_storage(s3.uri("probe"))
    assert set(s3.keys("probe")) <= {"probe/"}  # at most the folder's marker, which pyarrow keeps


def test_wrong_keys_fail_in_one_line(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(fs.StorageError, match="AWS Error (ACCESS_DENIED|SIGNATURE_DOES_NOT_MATCH)") as error:
        fs.check_storage(s3.uri("x"))
    assert "AWS_SECRET_ACCESS_KEY" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow  # pyarrow retries a refused connection for a few seconds
def test_an_unreachable_endpoint_fails_in_one_line(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(fs.StorageError, match="NETWORK_CONNECTION"):
        fs.check_storage(s3.uri("x"), write=False)


def test_the_cli_fails_before_launch_in_one_line(s3, tmp_path, monkeypatch, capsys):
    from tests.sweep_helpers import write_sweep

    sweep = write_sweep(tmp_path / "sweep.yaml", tmp_path / "unused")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["sweep", "run", str(sweep), "--storage", s3.uri("lth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage s3://lth/lth: cannot write it (AWS Error ACCESS_DENIED")
    assert err.count("\n") == 1
    assert main(["results", s3.uri("lth/tiny")]) == 2 and "cannot read it" in capsys.readouterr().err


def test_a_dense_run_is_taken_from_s3_only_once_its_upload_is_whole(s3, tmp_path):
    store = DenseStore(s3.uri("dense-test"), cache=tmp_path / "writer")
    for name in DenseLayout.files([0, 30]):
        (store.local("k") / name).parent.mkdir(parents=True, exist_ok=True)
        (store.local("k") / name).write_bytes(name.encode())
    store.publish("k", [30])
    reader = DenseStore(s3.uri("dense-test"), cache=tmp_path / "reader")
    assert reader.complete("k", [0, 30])
    local = reader.fetch("k", [30])
    assert all((local / n).read_bytes() == n.encode() for n in DenseLayout.files([0, 30]))
    assert not list(local.rglob(".*.tmp"))  # downloads renamed into place
    # An upload cut short (a lost node) lacks its commit record: no reader takes it.
    s3.client().delete_object(Bucket=s3.bucket, Key=f"dense-test/dense/k/{DenseLayout.files([0, 30])[-1]}")
    assert not reader.complete("k", [0, 30])


def test_a_sweep_file_whose_storage_embeds_credentials_is_refused(tmp_path):
    from tests.sweep_helpers import sweep_spec
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match="storage: the storage URI s3://bucket/lth carries credentials") as error:
        sweep_spec("s3://AKIAEXAMPLE:s3cr3t/x@bucket/lth")
    assert "s3cr3t" not in str(error.value)
