#!/bin/sh
# One-shot set-up for docker-compose (the `seaweedfs-init` service, image
# chrislusf/seaweedfs), through SeaweedFS's own admin channel (no S3 keys needed):
#   1. the pool bucket, if it does not exist;
#   2. a copy of the images under POOL_DIR (mounted at /pool), if there are any;
#      sub-folders become key prefixes.
# The accounts are set by start.sh. Safe to run again: `docker compose run --rm
# seaweedfs-init` uploads new images. SEAWEEDFS_MASTER / SEAWEEDFS_FILER / WEED point
# elsewhere for tests (tests/test_deploy_seaweedfs.py runs this script).
set -eu

: "${POOL_BUCKET:?}"
master=${SEAWEEDFS_MASTER:-seaweedfs:9333}
filer=${SEAWEEDFS_FILER:-seaweedfs:8888}
weed=${WEED:-weed}
pool=${POOL_MOUNT:-/pool}

if echo "s3.bucket.list" | "$weed" shell -master="$master" -filer="$filer" \
        | grep -q "^  $POOL_BUCKET	"; then
    echo "bucket '$POOL_BUCKET' exists"
else
    echo "s3.bucket.create -name $POOL_BUCKET" | "$weed" shell -master="$master" -filer="$filer"
fi

# A glob, not find(1): the image is minimal. `*` skips dotfiles such as .gitignore.
set -- "$pool"/*
if [ -e "$1" ]; then
    "$weed" filer.copy "$@" "http://$filer/buckets/$POOL_BUCKET/"
else
    echo "no images under POOL_DIR; upload some to bucket '$POOL_BUCKET' (see docs/deploy.md)"
fi
echo "bucket '$POOL_BUCKET' ready"
