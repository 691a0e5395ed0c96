#!/usr/bin/env bash
# The wheels the GPU kit needs and the device image lacks (jsonschema and what it needs; orjson,
# which the suite uses where present), for the image's Python 3.12 on x86-64, into
# benchmarks/gpu/wheels/ (ignored by git; name it in the device call's `carry`).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
for package in jsonschema jsonschema-specifications referencing rpds-py orjson; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d wheels "$package"
done
ls wheels
