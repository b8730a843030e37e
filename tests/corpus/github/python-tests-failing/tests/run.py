import sys

sys.path.insert(0, ".")
import calc  # noqa: E402

cases = [
    ("add", calc.add, (2, 3), 5),
    ("sub", calc.sub, (5, 3), 2),
]
failures = 0
for name, fn, args, want in cases:
    got = fn(*args)
    if got == want:
        print(f"PASS {name}{args} == {want}")
    else:
        failures += 1
        print(f"FAIL {name}{args}: expected {want}, got {got}")
        print(f"::error file=calc.py,line=6::{name} returned {got}, expected {want}")
print(f"{len(cases) - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
