#!/usr/bin/env bash
# Install what the tests need (in .venv) and run the whole suite: lint, types, tests.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Headless Chromium for the summary render test (Debian package; installed only when missing).
bash scripts/ensure_chromium.sh
export INO_REQUIRE_BROWSER=1
# PySpark (the `spark` extra) and a Java runtime (Debian openjdk-17-jre-headless, installed only
# when missing) for the Spark screening engine's tests (tests/test_screen_spark.py).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[spark]'
JAVA_HOME=$(bash scripts/ensure_java.sh)
export JAVA_HOME
# The FHIR test server (sekmet-fhir, own venv under .cache/) and the offline R4 validator
# (npm @medplum/core, tools/fhir-validator) are installed by the test fixtures on first use.
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q "$@"
