#!/usr/bin/env bash
# Set up fex on a fresh machine (CPU). Idempotent: reruns are quick.
#   torch==2.13.0 goes on the same pip line as everything that depends on torch, so pip keeps
#   the CPU build instead of pulling CUDA wheels. Users with their own CUDA torch: pip install -e ".[text,dev]".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
$PY -m pip install -q torch==2.13.0 -e ".[text,wandb,dev,interactions,tda,serve]"
# Headless Chromium + its WebDriver (Debian packages) for the serving page test (tests/test_serve_page.py).
if ! command -v chromium >/dev/null 2>&1 || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "warning: chromium could not be installed; the page test will be skipped"
  else
    echo "warning: no apt-get; install chromium and chromium-driver for the page test"
  fi
fi
# The vision extra: torchvision's only wheel here is a CUDA build; fex imports it lazily through a
# compat shim. It goes into a side folder (no deps) so the main environment runs without torchvision.
if [ ! -d .cache/torchvision-site/torchvision ]; then
  $PY -m pip install -q --no-deps --target .cache/torchvision-site torchvision==0.28.0 \
    || echo "warning: torchvision wheel unavailable; the vision test will be skipped"
fi
