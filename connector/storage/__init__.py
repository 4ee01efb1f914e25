"""Object storage: S3 and S3-compatible servers (``s3``, the only importer of ``boto3``),
a local folder (``local``), and the cache of labeled items (``cache``)."""
