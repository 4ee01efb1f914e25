#!/bin/sh
# Entry point of the `seaweedfs` service of docker-compose.yml (image chrislusf/seaweedfs):
# master, volume server, filer and S3 gateway in one process, data under /data.
#
# SeaweedFS reads its S3 accounts from a JSON file only, so this writes one from the
# environment first (readable by this process alone):
#   S3_ADMIN_ACCESS_KEY / S3_ADMIN_SECRET_KEY: everything; for you, never for a service
#   S3_ACCESS_KEY / S3_SECRET_KEY: read and list POOL_BUCKET, nothing else; the connector
#     uses it and hands it to Label Studio
# `start.sh --config-only` writes the file and stops (tests/test_deploy_seaweedfs.py).
set -eu

: "${S3_ADMIN_ACCESS_KEY:?}" "${S3_ADMIN_SECRET_KEY:?}" "${POOL_BUCKET:?}"
: "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}"
config=${S3_CONFIG:-/tmp/s3-identities.json}

umask 077
cat >"$config" <<JSON
{
  "identities": [
    {"name": "admin",
     "credentials": [{"accessKey": "$S3_ADMIN_ACCESS_KEY", "secretKey": "$S3_ADMIN_SECRET_KEY"}],
     "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
    {"name": "al-connector",
     "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
     "actions": ["Read:$POOL_BUCKET", "List:$POOL_BUCKET"]}
  ]
}
JSON
if [ "${1:-}" = "--config-only" ]; then
    exit 0
fi

# -ip: the name other containers reach it by (the volume server advertises it).
# Iceberg and Lance catalogs off: not used, and they would claim more ports.
exec weed server -dir=/data -ip=seaweedfs -ip.bind=0.0.0.0 -filer -s3 \
    -s3.config="$config" -s3.port=8333 -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.volumeSizeLimitMB=1024 -volume.max=0
