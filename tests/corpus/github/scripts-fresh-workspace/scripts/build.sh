#!/bin/sh
set -e
mkdir -p out
echo "binary for $(cat VERSION)" > out/app.bin
echo "build done (version $(cat VERSION))"
