"""Local paths and s3:// URIs through one interface.

S3 is configured only by the standard variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL_S3 (for S3-compatible stores such as SeaweedFS or MinIO) and AWS_REGION /
AWS_DEFAULT_REGION. Transfers use boto3's adaptive retries and multipart uploads for large files.
Errors name the endpoint and bucket, never a credential.
"""

import functools
import hashlib
import os
import shutil
from pathlib import Path

from tlpipe.errors import TlpipeError

MULTIPART_THRESHOLD = 8 * 1024 * 1024
TRANSFER_THREADS = 16  # concurrent S3 transfers of one folder: a photo is one small request each


def is_s3(location: str) -> bool:
    return str(location).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise TlpipeError(f"'{uri}' is not an s3://bucket/key URI.")
    return bucket, key


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


@functools.cache
def client():
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": 5},
        # boto3 >= 1.36 adds CRC checksums to every request; several S3-compatible stores reject
        # them. Send and check them only where the API requires it.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Path-style addressing works with every S3-compatible store and with AWS.
        s3={"addressing_style": "path"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=TRANSFER_THREADS,
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # A session of its own: boto3's default session keeps the first credentials it resolved for the whole
    # process, so a cleared cache would still sign with them.
    return boto3.session.Session().client("s3", region_name=region, config=config)


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)


def explain(error: Exception, bucket: str) -> TlpipeError:
    """One sentence for what went wrong talking to S3, naming the endpoint and bucket."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = f"bucket '{bucket}' at {endpoint()}"
    if isinstance(error, EndpointConnectionError) or "Could not connect" in str(error):
        return TlpipeError(f"cannot reach the S3 endpoint {endpoint()}; is it running and is AWS_ENDPOINT_URL_S3 right?")
    if isinstance(error, NoCredentialsError):
        return TlpipeError(f"no S3 credentials for {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
            return TlpipeError(f"S3 refused the credentials for {where} (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).")
        if code in ("404", "NoSuchBucket", "NotFound"):
            return TlpipeError(f"{where} does not exist; create it or fix the URI.")
        return TlpipeError(f"S3 error {code} on {where}.")
    return TlpipeError(f"S3 request to {where} failed ({type(error).__name__}: {error}).")


def has_credentials() -> bool:
    """Whether boto3 finds S3 credentials here (variables, profile or instance role)."""
    import boto3

    return boto3.Session().get_credentials() is not None


def check_bucket(uri: str) -> None:
    """Fails fast with one sentence if the bucket of `uri` is unreachable, forbidden or missing."""
    bucket, _ = split_s3(uri)
    try:
        client().head_bucket(Bucket=bucket)
    except Exception as error:
        raise explain(error, bucket) from None


def list_keys(uri: str) -> list[str]:
    """Keys of the objects under an s3:// prefix, relative to it, page by page. Keys ending in "/" are folder
    markers (the zero-byte `prefix/` and `prefix/class/` that the AWS console and many sync tools write), not
    files: they are left out."""
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    keys = []
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"][len(prefix) :] for item in page.get("Contents", []) if not item["Key"].endswith("/")]
    except Exception as error:
        raise explain(error, bucket) from None
    return sorted(keys)


def fingerprint(location: str) -> str:
    """A hash of what is stored at a file or folder, local or s3://, from its listing alone (names, sizes,
    and ETags or modification times): it changes when a file is added, removed or rewritten. An S3
    location is taken as a key prefix, so `photos` also covers `photos2/`: more changes, never fewer."""
    digest = hashlib.sha256()
    if is_s3(location):
        bucket, prefix = split_s3(location)
        try:
            for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    digest.update(f"{item['Key']}\0{item['Size']}\0{item['ETag']}\n".encode())
        except Exception as error:
            raise explain(error, bucket) from None
        return digest.hexdigest()
    root = Path(location)
    if not root.exists():
        raise TlpipeError(f"{location} does not exist.")
    for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def in_parallel(transfer, items, threads: int = TRANSFER_THREADS) -> None:
    """Calls transfer(item) for every item on a pool of threads (S3 requests wait on the network, not the
    CPU); the first error is raised once the transfers under way have ended, and no new one starts."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(transfer, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()


def read_bytes(location: str) -> bytes:
    """The content of one file, local or s3://."""
    if not is_s3(location):
        return Path(location).read_bytes()
    bucket, key = split_s3(location)
    try:
        return client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:
        raise explain(error, bucket) from None


def _copy_local(source: Path, destination: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True)
    elif source.is_file():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    else:
        raise TlpipeError(f"{source} does not exist.")


def inside(destination: Path, relative: str, uri: str) -> Path:
    """Where the object `uri`, at `relative` under a downloaded prefix, lands: in `destination`, or refused.
    S3 keeps keys verbatim, so whoever writes to a bucket can name a key `data//etc/x` or `data/../../x`;
    joined unchecked, it would write outside the folder (site-packages included)."""
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise TlpipeError(f"refusing {uri}: its key has an empty, '.' or '..' part, which would place the file "
                          f"outside the download folder {destination}; rename the object.")
    target = (destination / relative).resolve()
    if not target.is_relative_to(destination.resolve()):
        raise TlpipeError(f"refusing {uri}: it would be written outside the download folder {destination}.")
    return target


def download(location: str, destination: str | Path) -> Path:
    """Copies a file or a whole prefix (a "directory") from S3 or a local path to `destination`."""
    destination = Path(destination)
    if not is_s3(location):
        _copy_local(Path(location), destination)
        return destination
    bucket, key = split_s3(location)
    s3, config = client(), _transfer_config()
    try:
        if key and not key.endswith("/") and _object_exists(bucket, key):
            destination.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(destination), Config=config)
            return destination
        keys = list_keys(location)
        if not keys:
            raise TlpipeError(f"nothing at {location} (no such key or prefix in bucket '{bucket}').")
        prefix = key.rstrip("/") + "/" if key else ""
        # Every target is checked before anything is written: a refused key leaves nothing behind.
        targets = {relative: inside(destination, relative, f"s3://{bucket}/{prefix}{relative}") for relative in keys}

        def fetch(relative: str) -> None:
            targets[relative].parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, prefix + relative, str(targets[relative]), Config=config)

        in_parallel(fetch, keys)
    except TlpipeError:
        raise
    except Exception as error:
        raise explain(error, bucket) from None
    return destination


def upload(source: str | Path, location: str) -> None:
    """Copies a local file or directory to S3 or a local path (a directory keeps its layout)."""
    source = Path(source)
    if not is_s3(location):
        _copy_local(source, Path(location))
        return
    bucket, key = split_s3(location)
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    s3, config = client(), _transfer_config()

    def send(path: Path) -> None:
        target = f"{key.rstrip('/')}/{path.relative_to(source).as_posix()}".lstrip("/") if source.is_dir() else key
        s3.upload_file(str(path), bucket, target, Config=config)

    try:
        in_parallel(send, files)
    except Exception as error:
        raise explain(error, bucket) from None


def _object_exists(bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    if not key:
        return False
    try:
        client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
