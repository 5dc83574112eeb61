#!/usr/bin/env bash
# The test suite, as the README and CI run it: installs the real MQTT broker, MQTT clients and
# browser the tests drive when they are missing, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
exec cargo test --workspace --locked "$@"
