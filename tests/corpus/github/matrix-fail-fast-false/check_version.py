import sys

version = sys.argv[1]
if version == "3.11":
    print(f"python {version}: test_parse FAILED")
    sys.exit(1)
print(f"python {version}: 3 tests passed")
