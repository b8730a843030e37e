import json
import os

packages = sorted(os.listdir("packages"))
include = [
    {"project": p, "config": "Release" if p == "api" else "Debug"}
    for p in packages
]
print("matrix=" + json.dumps({"include": include}, separators=(",", ":")))
print(f"count={len(packages)}")
