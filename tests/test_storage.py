"""The one storage abstraction: atomic local writes, S3 multipart completed or aborted."""

from __future__ import annotations

import pytest

from tasks.core.errors import DbopsError
from tasks.core.settings import s3_options_from_env
from tasks.storage.destinations import Destination


class Boom(Exception):
    pass


def test_local_write_is_atomic(tmp_path):
    dest = Destination.from_url(str(tmp_path / "b"))
    dest.check_writable()
    with pytest.raises(Boom), dest.open_write("x.sql.gz") as stream:
        stream.write(b"half")
        assert [p.name for p in (tmp_path / "b").iterdir()][0].startswith(".x.sql.gz.partial-")
        raise Boom
    assert list((tmp_path / "b").iterdir()) == []
    dest.write_bytes("x.sql.gz", b"whole")
    assert [o.name for o in dest.list()] == ["x.sql.gz"] and dest.read_bytes("x.sql.gz") == b"whole"
    dest.delete("x.sql.gz")
    assert dest.list() == []


def test_s3_write_list_read_delete(bucket, s3_client):
    dest = Destination.from_url(f"s3://{bucket}/a/b", s3_options_from_env())
    dest.check_writable()
    dest.write_bytes("one.sql.gz", b"1" * 10)
    s3_client.put_object(Bucket=bucket, Key="a/b/nested/ignored", Body=b"x")
    assert [(o.name, o.size) for o in dest.list()] == [("one.sql.gz", 10)]
    assert dest.exists("one.sql.gz") and not dest.exists("two")
    assert dest.read_bytes("one.sql.gz") == b"1" * 10
    dest.delete("one.sql.gz")
    assert dest.list() == []


def test_s3_failure_mid_write_aborts_the_upload(bucket, s3_client):
    dest = Destination.from_url(f"s3://{bucket}", s3_options_from_env())
    with pytest.raises(Boom), dest.open_write("partial.sql.gz") as stream:
        stream.write(b"x" * (17 * 1024 * 1024))  # one part already uploaded
        assert len(s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
        raise Boom
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_missing_bucket_and_bad_scheme(s3_server):
    with pytest.raises(DbopsError, match="does not exist"):
        Destination.from_url("s3://no-such-bucket-here/x", s3_options_from_env()).check_writable()
    with pytest.raises(DbopsError, match="not supported"):
        Destination.from_url("gs://bucket/x")
    with pytest.raises(DbopsError, match="names no bucket"):
        Destination.from_url("s3:///x")
