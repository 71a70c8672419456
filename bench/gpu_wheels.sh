#!/usr/bin/env bash
# Run here, before bench/gpu_check.sh goes to a GPU machine: fetch, for the machine's Python
# 3.12, the wheels prelabel needs that its image lacks (it reaches no registry). Into .whl/,
# which git ignores; carry it with the call.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  boto3 botocore s3transfer jmespath pycocotools pydantic pydantic-core pydantic-settings \
  annotated-types typing-inspection python-dotenv orjson
du -sh .whl
