#!/usr/bin/env python3
"""Copy the tinkex_persist package into another project's tree under a new package name.

    python tools/vendor.py DEST --as PACKAGE

creates ``DEST/PACKAGE/`` holding the package's modules unchanged, plus the project's ``LICENSE``
(Apache-2.0 asks that a copy carries it) and a ``VENDORED_FROM`` marker. The package imports itself only
relatively and derives logger names from ``__name__``, so the copy works as is; this tool refuses to
copy a tree that has an absolute self-import, and to replace a directory that is not an earlier copy.
"""

import argparse
import ast
import keyword
import os
import shutil
import sys
from typing import List, Optional, Sequence

SOURCE_PACKAGE = "tinkex_persist"
#: Marker file written into each copy, so a later run may replace it.
MARKER = "VENDORED_FROM"
#: The project's license, next to the package directory; every copy carries it.
LICENSE = "LICENSE"
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def _source_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(here), SOURCE_PACKAGE)


def absolute_self_imports(package_dir: str, name: str = SOURCE_PACKAGE) -> List[str]:
    """Return ``file:line`` of every absolute import of ``name`` under ``package_dir``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            path = os.path.join(dirpath, fname)
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    mods = [node.module or ""]
                else:
                    continue
                if any(m == name or m.startswith(name + ".") for m in mods):
                    found.append("%s:%d" % (os.path.relpath(path, package_dir), node.lineno))
    return found


def vendor(dest: str, package: str, source: Optional[str] = None) -> str:
    """Copy the package into ``dest/package`` and return that directory.

    Raises:
        ValueError: ``package`` is not a valid identifier, the source has an absolute self-import, or no
            ``LICENSE`` is found next to the source package.
        FileExistsError: the target exists and is not an earlier vendored copy.
    """
    if not package.isidentifier() or keyword.iskeyword(package):
        raise ValueError("--as %r is not a valid Python package name" % package)
    source = source or _source_dir()
    if not os.path.isfile(os.path.join(source, "__init__.py")):
        raise ValueError("%s is not a package directory" % source)
    offenders = absolute_self_imports(source)
    if offenders:
        raise ValueError("absolute imports of %s would break a vendored copy: %s" % (SOURCE_PACKAGE, ", ".join(offenders)))
    license_file = os.path.join(os.path.dirname(os.path.abspath(source)), LICENSE)
    if not os.path.isfile(license_file):
        raise ValueError("%s is missing: a vendored copy must carry the license" % license_file)
    target = os.path.join(dest, package)
    if os.path.lexists(target):
        if not os.path.isfile(os.path.join(target, MARKER)):
            raise FileExistsError("%s exists and is not a vendored copy; remove it first" % target)
        shutil.rmtree(target)
    os.makedirs(dest, exist_ok=True)
    shutil.copytree(
        source,
        target,
        ignore=lambda d, names: [n for n in names if n in _SKIP_DIRS or n.endswith(_SKIP_SUFFIXES)],
    )
    shutil.copyfile(license_file, os.path.join(target, LICENSE))
    version = "unknown"
    with open(os.path.join(source, "_version.py"), "r", encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                version = line.split("=", 1)[1].strip().strip("\"'")
                break
    with open(os.path.join(target, MARKER), "w", encoding="utf-8") as f:
        f.write("%s %s\n" % (SOURCE_PACKAGE, version))
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vendor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", metavar="DEST", help="directory to copy into (e.g. your project's src/yourpkg/_vendor)")
    parser.add_argument("--as", dest="package", required=True, metavar="PACKAGE", help="name of the copied package")
    args = parser.parse_args(argv)
    try:
        target = vendor(args.dest, args.package)
    except (ValueError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
