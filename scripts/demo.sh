#!/usr/bin/env bash
# Install the adapter (in .venv) and run the main job on the bundled examples/ (no server needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
for protocol in fda-label nhs-ta514 es-valtermed mdacc-low-dose; do
  echo "=================== $protocol ==================="
  .venv/bin/ino-adapter evaluate examples/ --protocol "$protocol" --as-of 2026-11-21 --format text \
    --out out/
done
echo
echo "Per patient and variant, out/<patient id>_<hash>/<variant>/ now holds evaluation.json,"
echo "summary.html, summary.md and bundle.json (the FHIR transaction that writes the result back)."
echo "For example:"
folder=$(.venv/bin/python -c 'from adapter.outputs import folder_name; print(folder_name({"patient": "Patient/p09-cycle-2"}))')
ls -1 "out/$folder/nhs-ta514/"
echo
echo "------- out/$folder/nhs-ta514/summary.md -------"
cat "out/$folder/nhs-ta514/summary.md"
