"""boto3's managed transfer as a bench contender: ``boto3_xfer.py ENDPOINT get|put SRC DST``.

``get s3://bucket/key file`` runs ``download_file``, ``put file s3://bucket/key``
runs ``upload_file``, both with boto3's default TransferConfig (what a user
who writes three lines of boto3 gets). Run as its own process by bench/run.py
so it is timed like every other tool.
"""

from __future__ import annotations

import sys

import boto3


def split(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def main() -> None:
    endpoint, op, src, dst = sys.argv[1:5]
    client = boto3.client("s3", endpoint_url=endpoint)
    if op == "get":
        bucket, key = split(src)
        client.download_file(bucket, key, dst)
    else:
        bucket, key = split(dst)
        client.upload_file(src, bucket, key)


if __name__ == "__main__":
    main()
