#!/bin/sh
# One-shot MinIO set-up for docker-compose (the `minio-init` service, image minio/mc):
#   1. the pool bucket, if it does not exist;
#   2. a read-only user for the connector and Label Studio (list + get on that bucket
#      only), so the root credentials never leave MinIO;
#   3. a copy of the images under POOL_DIR (mounted at /pool), if there are any.
# Safe to run again: `docker compose run --rm minio-init` re-uploads new images.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${POOL_BUCKET:?}"
: "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}"

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing "local/$POOL_BUCKET"

policy=/tmp/alc-pool-read.json
cat >"$policy" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
     "Resource": ["arn:aws:s3:::$POOL_BUCKET"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject"],
     "Resource": ["arn:aws:s3:::$POOL_BUCKET/*"]}
  ]
}
JSON
mc admin policy create local alc-pool-read "$policy"
mc admin user add local "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
# "attach" fails when the policy is already attached (a re-run); that is fine.
mc admin policy attach local alc-pool-read --user "$S3_ACCESS_KEY" 2>/dev/null || true

# A glob, not find(1): the mc image is minimal. `*` skips dotfiles such as .gitignore.
set -- /pool/*
if [ -e "$1" ]; then
    mc mirror --overwrite --exclude '.gitignore' /pool "local/$POOL_BUCKET"
else
    echo "no images under POOL_DIR; upload some to bucket '$POOL_BUCKET' (see docs/deploy.md)"
fi
echo "bucket '$POOL_BUCKET' ready"
