#!/usr/bin/env bash
# Downloads into .whl/ exactly the wheels that tools/device_check.sh installs on the bare GPU
# machine (no package registry there): the project's requirements its image lacks. The image
# (/work/.library/device/KINDS.md, read 2026-11) has Python 3.12, torch 2.11.0+cu130, torchvision,
# numpy, PyYAML, opencv-python-headless, setuptools, ninja, pytest, pytest-xdist and pytest-timeout,
# and lacks yacs and pycocotools. The wheels are for that Python: CPython 3.12 (cp312 or abi3) or
# pure Python, manylinux x86-64. Their own requirements are on the image: yacs needs PyYAML,
# pycocotools numpy. pytest-xdist / pytest-timeout are NOT carried: a second copy beside the
# image's would register its pytest plugin twice; device_check.sh checks for them and falls back.
#
#   tools/fetch_device_wheels.sh              download (pip download, no dependencies)
#   tools/fetch_device_wheels.sh --dry-run    only check that .whl/ holds exactly these wheels
#                                             (one version each, cp312/abi3/py3 tags); exit 1 if not
# DEVICE_WHEELS_DIR (default .whl, the folder device_check.sh installs from) changes the folder.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# name==version: pinned, so that one version of each lands in .whl/ (two would stop the install).
WHEELS=(yacs==0.1.8 pycocotools==2.0.11)
WHL="${DEVICE_WHEELS_DIR:-.whl}"

check() {
  local ok=0 spec name version files f
  for spec in "${WHEELS[@]}"; do
    name="${spec%%==*}" version="${spec##*==}"
    files=$(ls "$WHL" 2>/dev/null | grep -i "^${name//-/_}-" || true)
    if [ "$(printf '%s\n' "$files" | grep -c .)" -ne 1 ]; then
      echo "MISSING or duplicated: $spec in $WHL/ (found: ${files:-none}); run tools/fetch_device_wheels.sh"
      ok=1
      continue
    fi
    f="$files"
    if [[ "$f" != "${name//-/_}-${version}-"* ]]; then
      echo "WRONG VERSION: $WHL/$f (expected $spec)"
      ok=1
    elif ! [[ "$f" =~ -(py3-none-any|cp312-cp312-manylinux[^-]*x86_64|cp3(1[0-2]|[0-9])-abi3-manylinux[^-]*x86_64)\.whl$ ]]; then
      echo "NOT FOR CPython 3.12 x86-64: $WHL/$f"
      ok=1
    else
      echo "ok: $WHL/$f"
    fi
  done
  for f in $(ls "$WHL"/*.whl 2>/dev/null); do
    name="$(basename "$f" | cut -d- -f1)"
    if ! printf '%s\n' "${WHEELS[@]%%==*}" | tr - _ | grep -qix "$name"; then
      echo "EXTRA wheel (not needed, would be installed too): $f"
      ok=1
    fi
  done
  return "$ok"
}

if [ "${1:-}" = "--dry-run" ]; then
  check
  exit $?
fi
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || grep -qxF '/.whl/' .gitignore || echo /.whl/ >>.git/info/exclude
mkdir -p "$WHL"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$WHL" "${WHEELS[@]}"
check
