#!/usr/bin/env bash
# Sets up, builds everything and runs every test: GoogleTest through CTest, then pytest.
# Exits non-zero when any test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${FTD_BUILD_DIR:-build}
JOBS=${FTD_JOBS:-$(nproc)}

bash scripts/setup.sh || exit 1
start=$(date +%s)
cmake -S . -B "$BUILD_DIR" -G Ninja ${FTD_CMAKE_ARGS:-} >"$BUILD_DIR.configure.log" 2>&1 || {
  cat "$BUILD_DIR.configure.log"; exit 1; }
cmake --build "$BUILD_DIR" -j "$JOBS" || exit 1
echo "[test] build took $(( $(date +%s) - start )) s"

status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" --timeout 900 || status=1
FTD_BUILD_DIR="$BUILD_DIR" python3 -m pytest tests/python -q -p no:cacheprovider || status=1
echo "[test] total $(( $(date +%s) - start )) s, exit $status"
exit $status
