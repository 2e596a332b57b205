#!/usr/bin/env bash
# Create .venv and install escapestat with its test extra. PyTorch's CPU build goes in
# first (a plain `torch` requirement could pull a multi-GB CUDA build); the project's
# torch requirement is a range that this build satisfies, so nothing more is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
find_links=()
[ -d /opt/wheels ] && find_links=(--find-links /opt/wheels)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --disable-pip-version-check -q "${find_links[@]}" "torch==2.13.0"
fi
.venv/bin/pip install --disable-pip-version-check -q "${find_links[@]}" -e ".[test]"
echo "escapestat installed in .venv ($(.venv/bin/escapestat --version 2>/dev/null || echo ok))" >&2
