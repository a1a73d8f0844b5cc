"""Regenerate the README's config reference from the config models.

python scripts/config_reference.py
"""

import re
from pathlib import Path

from distill.config import config_reference

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"

text = README.read_text(encoding="utf-8")
block = f"{START}\n{config_reference()}\n{END}"
README.write_text(re.sub(f"{START}.*?{END}", lambda _: block, text, flags=re.S), encoding="utf-8")
print(f"updated {README}")
