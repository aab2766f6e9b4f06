"""Prints the README's configuration tables, generated from the settings' declarations.

    python scripts/settings_tables.py                    # print them as Markdown
    python scripts/settings_tables.py --write README.md  # replace them in the README

Each table sits between its markers in the README; tests/test_settings.py fails when the
README's tables and the declarations disagree.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from memory_service_processor._cli.options import markdown_tables, replace_tables


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Prints the tables, or writes them into the file given with ``--write``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="README", help="replace the tables in this file instead of printing them")
    args = parser.parse_args(argv)
    if args.write:
        with open(args.write, encoding="utf-8") as f:
            text = replace_tables(f.read())
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(text)
        return 0
    print("\n\n".join(markdown_tables().values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
