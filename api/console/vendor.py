"""The front-end files the console and the docs pages serve, vendored from the npm registry.

    python -m api.console.vendor            re-fetch every pinned package and write its files
    python -m api.console.vendor --check    verify the committed files against vendor.json (no network)
    python -m api.console.vendor --pin NAME VERSION
                                            record a package's version and the registry's integrity

`vendor.json` names, for each package, its version, its licence, the tarball's `integrity` (sha512, as
the registry's metadata gives it) and the files taken from it with their sha256. A fetch refuses a
tarball whose sha512 is not the recorded one, so what is committed is what the registry published
under that version; `--check` (run by tests/console/test_vendor.py) holds the committed files to it.
Installations never fetch anything: the files ship in the Python distribution.
"""

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
PINS = HERE / "vendor.json"
VENDOR = HERE / "static" / "vendor"
REGISTRY = "https://registry.npmjs.org"
TIMEOUT = 120.0


class VendorError(Exception):
    pass


def load_pins() -> list[dict[str, Any]]:
    packages: list[dict[str, Any]] = json.loads(PINS.read_text())["packages"]
    return packages


def save_pins(packages: list[dict[str, Any]]) -> None:
    PINS.write_text(json.dumps({"packages": packages}, indent=2, ensure_ascii=False) + "\n")


def tarball_url(name: str, version: str) -> str:
    return f"{REGISTRY}/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(package: dict[str, Any], client: httpx.Client) -> None:
    """Download the pinned tarball, check its sha512, write the files it names and record their sha256."""
    name, version = package["name"], package["version"]
    response = client.get(tarball_url(name, version))
    response.raise_for_status()
    if integrity_of(response.content) != package["integrity"]:
        raise VendorError(f"{name}@{version}: the tarball's sha512 is not the one in {PINS.name}")
    target = VENDOR / name
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        for file in package["files"]:
            member = archive.extractfile(f"package/{file['from']}")
            if member is None:
                raise VendorError(f"{name}@{version} holds no file {file['from']!r}")
            out = target / file["to"]
            out.write_bytes(member.read())
            file["sha256"] = sha256_of(out)
    print(f"{name}@{version}: {len(package['files'])} files")


def check(packages: list[dict[str, Any]]) -> list[str]:
    """What differs between the committed files and vendor.json: an empty list when all is in place."""
    problems = []
    for package in packages:
        for file in package["files"]:
            path = VENDOR / package["name"] / file["to"]
            if not path.is_file():
                problems.append(f"{path.relative_to(HERE)}: missing")
            elif sha256_of(path) != file.get("sha256"):
                problems.append(f"{path.relative_to(HERE)}: its sha256 is not the one in {PINS.name}")
    return problems


def pin(packages: list[dict[str, Any]], name: str, version: str, client: httpx.Client) -> None:
    """Record `version` of an already listed package with the integrity the registry gives for it."""
    response = client.get(f"{REGISTRY}/{name}/{version}")
    response.raise_for_status()
    package = next((p for p in packages if p["name"] == name), None)
    if package is None:
        raise VendorError(f"{name} is not in {PINS.name}: add it (its files and licence) by hand first")
    package["version"] = version
    package["integrity"] = response.json()["dist"]["integrity"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="verify the committed files; no network")
    parser.add_argument("--pin", nargs=2, metavar=("NAME", "VERSION"), help="record a new version")
    args = parser.parse_args(argv)
    packages = load_pins()
    if args.check:
        problems = check(packages)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    try:
        with httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client:
            if args.pin:
                name, version = args.pin
                pin(packages, name, version, client)
            for package in packages:
                fetch(package, client)
    except (VendorError, httpx.HTTPError) as error:
        print(f"vendor: {error}", file=sys.stderr)
        return 1
    save_pins(packages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
