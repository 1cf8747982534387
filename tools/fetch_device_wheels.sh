#!/usr/bin/env bash
# Downloads into .whl/ the wheels that tools/device_check.sh installs on a bare GPU machine (no
# registry there): the project's requirements the machine's image lacks. Python 3.12, manylinux
# x86-64. torch, torchvision, numpy, opencv-python-headless, PyYAML, pytest and ninja are in the image.
#
#   tools/fetch_device_wheels.sh [PYTHON_VERSION]     (default 3.12)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYVER="${1:-3.12}"
cd "$REPO"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || grep -qxF '/.whl/' .gitignore || echo /.whl/ >>.git/info/exclude
mkdir -p .whl
# name==version: pinned so that one version of each lands in .whl/ (two would stop the install).
for spec in yacs==0.1.8 pycocotools==2.0.11; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
ls -l .whl
