#!/bin/sh
# Container entry point. Before: a loop of `litestream restore -if-db-not-exists` per
# shard, then `exec litestream replicate -exec "$@"`. Now one command does all of it:
# restore every missing database in parallel, replicate, run the service, forward
# SIGTERM to it, flush on exit, and exit with the service's code.
set -eu
exec replica replicate --config "${REPLICA_CONFIG:-/etc/replica.yml}" --exec "$*"
