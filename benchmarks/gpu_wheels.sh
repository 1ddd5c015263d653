#!/usr/bin/env bash
# Run HERE (with pip access) before a GPU check: fetch the wheels that the lent GPU
# machine lacks (it has torch, timm, lightning, torchmetrics, typer, rich, ... but no
# kornia, captum, grad-cam, tmeasures, fastervit or pydantic, and no internet) into .whl/,
# which git ignores. About 8 MB; the machine's Python is 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in kornia==0.9.0 kornia_rs==0.2.0 captum==0.9.0 ttach==0.0.3 fastervit==1.0.0 \
           tmeasures==1.2.11 pydantic==2.13.4 pydantic_core==2.46.4 annotated_types==0.7.0 \
           typing_inspection==0.4.2 typing_extensions==4.15.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${plat[@]}" -d .whl "$pkg"
done
python3 -m pip wheel -q --no-deps grad-cam==1.5.7 -w .whl   # published as an sdist only
ls .whl
