import os

print(foo)
