"""Storage against an S3 endpoint that keeps keys verbatim, as AWS S3 does: moto's server (a real S3 HTTP
API on a loopback port). SeaweedFS folds `//` and refuses `..`, so it cannot hold the keys tried here."""

import os
import subprocess
import sys
import time
import urllib.request

import boto3
import pytest
from helpers import free_port

from tlpipe import storage
from tlpipe.errors import TlpipeError

pytestmark = pytest.mark.slow  # starts a server


@pytest.fixture(scope="module")
def verbatim_s3():
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage.client.cache_clear()
    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="data")
    try:
        yield s3
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        storage.client.cache_clear()
        server.kill()
        server.wait()


@pytest.mark.parametrize("key", ["photos//etc/tlpipe-owned", "photos/../../tlpipe-owned", "photos/a/./b.png"])
def test_a_key_that_would_land_outside_the_download_folder_is_refused_and_nothing_is_written(verbatim_s3, tmp_path, key):
    prefix = f"case-{abs(hash(key))}/"
    verbatim_s3.put_object(Bucket="data", Key=prefix + "photos/a/1.png", Body=b"fine")
    verbatim_s3.put_object(Bucket="data", Key=prefix + key, Body=b"owned")
    assert prefix + key in [o["Key"] for o in verbatim_s3.list_objects_v2(Bucket="data", Prefix=prefix)["Contents"]]
    destination = tmp_path / "deep" / "down" / "folder"
    with pytest.raises(TlpipeError) as refused:
        storage.download(f"s3://data/{prefix}photos/", destination)
    assert f"refusing s3://data/{prefix}{key}" in str(refused.value)
    assert not destination.exists()  # not even the fine object: checked before anything is written
    assert not any(p.name == "tlpipe-owned" for p in tmp_path.rglob("*"))
    assert not os.path.exists("/etc/tlpipe-owned")


def test_ordinary_keys_download_into_the_folder(verbatim_s3, tmp_path):
    verbatim_s3.put_object(Bucket="data", Key="plain/photos/a/1.png", Body=b"one")
    verbatim_s3.put_object(Bucket="data", Key="plain/photos/b/2.png", Body=b"two")
    storage.download("s3://data/plain/photos/", tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "a/1.png", "b/2.png"]


def test_an_s3_endpoint_that_stops_answering_inside_a_library_is_one_sentence():
    """boto3 clients that tlpipe does not build (MLflow's artifact store) raise botocore's own errors."""
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    from tlpipe.errors import as_user_error

    for error in (EndpointConnectionError(endpoint_url="http://10.0.0.7:8333/models/m.safetensors"),
                  ReadTimeoutError(endpoint_url="http://10.0.0.7:8333/models/m.safetensors")):
        said = str(as_user_error(error))
        assert said.startswith("the S3 endpoint stopped answering (") and "http://10.0.0.7:8333" in said, said
    assert as_user_error(KeyError("a bug")) is None
