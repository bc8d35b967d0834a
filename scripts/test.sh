#!/usr/bin/env bash
# The test command: provisions Redis and a MongoDB-protocol server when
# REDIS_URL / MONGODB_URI are not given, runs every test of the workspace
# against them, and stops them. Extra arguments go to `cargo test`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/services.sh
source scripts/services.sh
services_up
cargo test --workspace --locked "$@"
