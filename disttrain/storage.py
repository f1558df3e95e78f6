"""Paths that may be object storage: `s3://`, `gs://`, `hdfs://`, ... through fsspec, or plain local paths.

`data.path`, `checkpoint.dir`, `train.resume` and `run.output_dir` take either. A local path (or `file://`) keeps
working exactly as before: it is never routed through fsspec. Endpoints and credentials come from where each
store's own client looks (for S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`,
`~/.aws/config` and `~/.aws/credentials`); disttrain never reads them itself and never prints them. Failures are
one line naming the URL and the reason (no endpoint answering, no credentials, access denied, no such bucket).
"""

from __future__ import annotations

import re

from disttrain.errors import DataError, missing

# fsspec protocol -> the extra (or package) that installs its client
CLIENTS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
           "hdfs": ("pyarrow", ""), "abfs": ("adlfs", "azure"), "az": ("adlfs", "azure")}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme(path) -> str:
    match = _SCHEME.match(str(path))
    return match.group(1).lower() if match else ""


def is_remote(path) -> bool:
    """A URL of a store other than the local filesystem."""
    return scheme(path) not in ("", "file", "local")


def local(path) -> str:
    """A local path (`file://` removed)."""
    text = str(path)
    return text[len("file://"):] if scheme(text) == "file" else text


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def filesystem(url: str, *, key: str):
    """(fsspec filesystem, path inside it) for a remote URL; one line when its client is missing."""
    import fsspec

    protocol = scheme(url)
    # S3: a silent endpoint (a firewall dropping packets) fails after 10 s per attempt rather than botocore's 60.
    options = {"config_kwargs": {"connect_timeout": 10}} if protocol in ("s3", "s3a") else {}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError:
        module, extra = CLIENTS.get(protocol, (protocol, ""))
        raise missing(module, f"{key}={url}") if extra else DataError(
            f"{key}: {url}: the {protocol}:// client is not installed; expected `pip install {module}`") from None
    except ValueError as exc:
        raise DataError(f"{key}: {url}: {exc}; expected s3://, gs://, hdfs://, file:// or a local path") from None


def explain(exc: BaseException, url: str, key: str) -> DataError:
    """One line for a failed remote operation (never the credentials, never a traceback)."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if "could not connect" in lowered or "connection refused" in lowered or "endpoint" in lowered and \
            "connect" in lowered or "timed out" in lowered or isinstance(exc, ConnectionError):
        reason = "no endpoint answers (check AWS_ENDPOINT_URL or the store's address)"
    elif "nocredentials" in lowered or "unable to locate credentials" in lowered or "credential" in lowered:
        reason = "no credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws)"
    elif "accessdenied" in lowered or "forbidden" in lowered or "403" in lowered or "signature" in lowered:
        reason = "access denied (the credentials are not allowed there)"
    elif "nosuchbucket" in lowered or "bucket" in lowered and "not" in lowered:
        reason = "no such bucket"
    elif isinstance(exc, FileNotFoundError):
        reason = "not found"
    else:
        reason = text.splitlines()[0][:200]
    return DataError(f"{key}: {url}: {reason}")


def remote_call(url: str, key: str, fn, *args, **kwargs):
    """fn(*args) with a store's exceptions turned into one line."""
    try:
        return fn(*args, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, OSError... : one line naming the URL
        raise explain(exc, url, key) from None


def remove_tree(fs, path: str) -> None:
    """Delete every object under `path`, then the directory entries a store may keep for the emptied prefixes
    (SeaweedFS lists `step_N/rank_00000/` until that entry itself is deleted; S3 keeps none, and then this is one
    listing more). Listing `path` or its parent afterwards shows nothing of it."""
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:  # nothing but empty directory entries (or nothing at all) there
        pass
    for directory in _directories(fs, path):
        try:
            fs.rm_file(directory.rstrip("/") + "/")  # the trailing slash names the directory entry
        except FileNotFoundError:
            pass


def _directories(fs, path: str) -> list[str]:
    """The directories `path` still lists, deepest first, `path` itself last ([] when it lists nothing)."""
    try:
        entries = fs.ls(path, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    nested = [d for e in entries if e.get("type") == "directory" and e["name"].rstrip("/") != path.rstrip("/")
              for d in _directories(fs, e["name"])]
    return [*nested, path] if entries else []


def check_reachable(url: str, key: str) -> None:
    """Fail early (one line) when the store cannot be reached or refuses us."""
    fs, path = filesystem(url, key=key)
    bucket = path.split("/", 1)[0]
    remote_call(url, key, fs.ls, bucket, detail=False)
