"""Check an artifact version exactly against its manifest: what CI calls.

    qrtrain verify outputs/NAME/v1            # one version
    qrtrain verify outputs/NAME               # every version of an artifact
    qrtrain verify outputs/NAME/v1 --json     # for machines
    qrtrain verify outputs/NAME/v1 --base ~/.cache/qrtrain/models/...   # also the base model's files

    qrtrain verify outputs/NAME/v1 --key pub.pem --require-signature      # and its signature (model.sig)

Exit codes: 0 verified, 1 a check failed (every failure listed), 2 usage or I/O error, 3 the files verify
but the signature does not (unsigned with --require-signature, another key's, or another version's).
Imports nothing heavy (no torch, transformers, peft, trl); files are hashed in streamed chunks.
"""

import json
import os
import re
import struct
from pathlib import Path, PurePosixPath

from qrtrain.artifacts.manifest import FORMAT_VERSION, MANIFEST_NAME, root_digest
from qrtrain.artifacts.signing import SIGNATURE_NAME, TrustWith, signature_result
from qrtrain.errors import QrtrainError
from qrtrain.files import sha256_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pkl", ".pth", ".pickle", ".ckpt")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER = 100 * 1024 * 1024
METADATA_SCHEMA = {"name": str, "version": str, "created": str, "qrtrain_version": str, "base_model": dict,
                   "model_type": str, "strategy": str, "quantization": str, "datasets": list, "seed": int,
                   "device": str, "libraries": dict, "base_weights_check": dict}


def verify_path(path: Path, base: Path | None = None, trust: TrustWith | None = None) -> list[dict]:
    """Results for a version folder, every version of an artifact folder, or a bundle (.tar.gz)."""
    path = Path(path)
    if not path.exists():
        raise QrtrainError(f"{path}: no such file or folder")
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        if trust is not None and (trust.checks() or trust.require):
            raise QrtrainError(f"{path}: signatures are checked on the unpacked version: qrtrain unpack {path} DEST, "
                               "then qrtrain verify DEST/NAME-vN with the same options")
        result = verify_contents(str(path), bundle_contents(path), base)
        result.pop("metadata", None)
        return [result]
    if path.is_dir() and (path / MANIFEST_NAME).exists():
        return [verify_version(path, base, trust=trust)]
    if path.is_dir():
        versions = sorted((p for p in path.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name)),
                          key=lambda p: int(p.name[1:]))
        if not versions:
            raise QrtrainError(f"{path}: neither a version folder (no {MANIFEST_NAME}) nor an artifact folder (no v<N> inside)")
        results = [verify_version(v, base, trust=trust) for v in versions]
        from qrtrain.artifacts.versions import LATEST_NAME, latest_problem

        problem, _ = latest_problem(path)
        if problem:  # `latest` is what evaluate, package and CI scripts follow: it must name the newest version
            results[-1]["problems"].append({"file": LATEST_NAME, "check": "latest", "message": problem})
            results[-1]["verified"] = False
        return results
    raise QrtrainError(f"{path}: expected an artifact version folder, an artifact name folder or a .tar.gz bundle")


def verify_version(folder: Path, base: Path | None = None, seen: frozenset = frozenset(),
                   trust: TrustWith | None = None) -> dict:
    result = verify_contents(str(folder), folder_contents(Path(folder)), base)
    signature = signature_result(Path(folder), trust, result["verified"])
    if signature["state"] == "invalid" or (signature["state"] == "unsigned" and trust is not None and trust.require):
        result["problems"].append({"file": SIGNATURE_NAME, "check": "signature", "message": signature["message"]
                                   if signature["state"] == "invalid" else "unsigned, and --require-signature "
                                   "was given: sign it with `qrtrain sign VERSION --key PRIVATE_KEY`"})
        result["verified"] = False
    result["signature"] = signature
    if isinstance(result.get("metadata"), dict):  # a version from init_adapter: its parent, when it is here
        check_parent(Path(folder), result["metadata"], lambda *p: result["problems"].append(
            dict(zip(("file", "check", "message"), p))), result["notes"].append, seen)
        result["verified"] = not result["problems"]
    named = Path(folder).name
    if re.fullmatch(r"v\d+", named):  # a copy of v1 placed as v537 is not v537
        recorded = (result.get("metadata") or {}).get("version")
        if isinstance(recorded, str) and recorded != named:
            result["problems"].append({"file": "metadata.json", "check": "version",
                                       "message": f"the folder is {named} but its metadata records {recorded}"})
            result["verified"] = False
    result.pop("metadata", None)
    return result


def check_parent(version_folder: Path, metadata: dict, fail, note, seen: frozenset = frozenset()) -> None:
    """The recorded parent, when it is beside this version: it verifies and has the recorded root digest."""
    parent = metadata.get("parent")
    if parent is None:
        return
    if not (isinstance(parent, dict) and all(isinstance(parent.get(k), str) for k in ("name", "version",
                                                                                      "root_digest"))):
        fail("metadata.json", "parent", "`parent` must be {name, version, root_digest}")
        return
    label = f"{parent['name']}/{parent['version']}"
    folder = Path(version_folder).resolve().parent.parent / parent["name"] / parent["version"]
    if not (folder / MANIFEST_NAME).is_file():
        note(f"parent {label} is not in this artifact root; its digest {parent['root_digest'][:16]}... was not checked")
        return
    if folder in seen:
        fail("metadata.json", "parent", f"the lineage loops back to {label}")
        return
    result = verify_version(folder, seen=seen | {Path(version_folder).resolve()})
    if not result["verified"]:
        fail("metadata.json", "parent", f"the parent {label} fails verification: "
             + "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:3]))
    elif result["root_digest"] != parent["root_digest"]:
        fail("metadata.json", "parent", f"the parent {label} has root digest {result['root_digest'][:16]}..., "
             f"not the {parent['root_digest'][:16]}... this version was trained from")


def folder_contents(folder: Path) -> dict:
    """What verify reads of a folder: file sizes, and ways to hash, read and read the head of a file."""
    problems, files = [], {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                problems.append((relative, "file-set", "symbolic link (not allowed in an artifact)"))
            elif name in filenames and not path.is_file():
                problems.append((relative, "file-set", "not a regular file"))
            elif name in filenames:
                files[relative] = path.stat().st_size
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]

    def head(relative: str, count: int) -> bytes:
        with open(folder / relative, "rb") as f:
            return f.read(count)

    return {"files": files, "problems": problems, "sha256": lambda r: sha256_file(folder / r),
            "read": lambda r: (folder / r).read_bytes(), "head": head, "path": folder}


def bundle_contents(path: Path) -> dict:
    """The same view of a .tar.gz bundle, read in one streaming pass without writing to disk.

    Members must sit under one top folder; absolute paths, '..', links, devices and duplicate names are
    problems. checksums.json must come first: a member is read only when its size is one the manifest
    lists, so a decompression bomb costs no more than the manifest declares."""
    import hashlib
    import tarfile

    problems, files, digests, small, heads = [], {}, {}, {}, {}
    top, sizes = None, None
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts or not parts:
                    problems.append((member.name, "bundle", "unsafe member path (absolute or '..')"))
                    continue
                top = top or parts[0]
                if parts[0] != top:
                    problems.append((member.name, "bundle", f"outside the bundle's top folder {top}/"))
                    continue
                relative = "/".join(parts[1:])
                if member.isdir():
                    continue
                if not member.isfile():
                    problems.append((relative or member.name, "bundle", "link or special file (not allowed)"))
                    continue
                if relative in files:
                    problems.append((relative, "bundle", "appears twice in the bundle (extraction would keep the last)"))
                    continue
                if sizes is None and relative != MANIFEST_NAME:
                    problems.append((relative, "bundle", f"comes before {MANIFEST_NAME}, which must be the first file"))
                    break
                files[relative] = member.size
                if relative != MANIFEST_NAME and member.size not in sizes:
                    continue  # not a size the manifest lists: named as extra or wrong-size without reading it
                if relative == MANIFEST_NAME and member.size > 16 << 20:
                    problems.append((relative, "bundle", "manifest larger than 16 MB"))
                    break
                stream = tar.extractfile(member)
                digest, first = hashlib.sha256(), b""
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    if len(first) < MAX_HEADER + 8 and (relative.endswith(".safetensors") or member.size <= 16 << 20):
                        first += chunk
                digests[relative] = digest.hexdigest()
                if member.size <= 16 << 20:
                    small[relative] = first
                heads[relative] = first
                if relative == MANIFEST_NAME:
                    sizes = manifest_sizes(first)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise QrtrainError(f"{path}: not a readable .tar.gz bundle ({error})") from None
    return {"files": files, "problems": problems, "sha256": digests.__getitem__,
            "read": small.__getitem__, "head": lambda r, count: heads[r][:count]}


def manifest_sizes(raw: bytes) -> set:
    """The file sizes a manifest lists (empty if it cannot be read: every check then fails on the manifest)."""
    try:
        entries = json.loads(raw.decode("utf-8")).get("files", [])
        return {e["size"] for e in entries if isinstance(e, dict) and type(e.get("size")) is int}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError, TypeError):
        return set()


def verify_contents(label: str, contents: dict, base: Path | None = None) -> dict:
    """Every check of one version; `problems` lists each failure as {file, check, message}."""
    problems: list[dict] = []

    def fail(file, check: str, message: str) -> None:
        problems.append({"file": file, "check": check, "message": message})

    for problem in contents["problems"]:
        fail(*problem)
    on_disk = dict(contents["files"])
    manifest = read_manifest(contents, fail) if on_disk.pop(MANIFEST_NAME, None) is not None else None
    if manifest is None and not any(p["file"] == MANIFEST_NAME for p in problems):
        fail(MANIFEST_NAME, "manifest", "missing or not a regular file")
    if manifest is not None:
        entries = {e["path"]: e for e in manifest["files"]}
        check_file_set(contents, entries, on_disk, fail)
        for relative, entry in entries.items():
            if relative in on_disk:
                check_file(contents, relative, entry, fail)
    for relative in on_disk:
        if relative.lower().endswith(PICKLE_SUFFIXES):
            fail(relative, "no-pickle", "pickle-based file: such files can run code when loaded; use safetensors")
    metadata = check_metadata(contents, fail) if "metadata.json" in on_disk else None
    if "metadata.json" not in on_disk:
        fail("metadata.json", "metadata", "missing")
    package_format = ((metadata or {}).get("package") or {}).get("format")
    tensors = {r: check_safetensors(contents, r, fail) for r in on_disk if r.endswith(".safetensors")}
    if package_format not in ("merged", "ollama", "gguf"):  # a model or adapter of another form, no PEFT files
        if "adapter_model.safetensors" not in on_disk:
            fail("adapter_model.safetensors", "adapter", "missing")
        if "adapter_config.json" not in on_disk:
            fail("adapter_config.json", "adapter", "missing")
        elif tensors.get("adapter_model.safetensors") is not None:
            check_adapter_config(contents, tensors["adapter_model.safetensors"], fail)
    if base is not None and metadata is not None:
        check_base(Path(base), metadata, fail)
    return {"path": label, "verified": not problems, "files": len(on_disk), "notes": [],
            "root_digest": manifest["root_digest"] if manifest else None, "problems": problems,
            "metadata": metadata if isinstance(metadata, dict) else None}


def read_manifest(contents: dict, fail) -> dict | None:
    try:
        manifest = json.loads(contents["read"](MANIFEST_NAME).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        fail(MANIFEST_NAME, "manifest", f"not valid JSON ({error})")
        return None
    except (OSError, KeyError):
        fail(MANIFEST_NAME, "manifest", "cannot be read")
        return None
    if not isinstance(manifest, dict):
        fail(MANIFEST_NAME, "manifest", "expected a JSON object")
        return None
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("algorithm") != "sha256":
        fail(MANIFEST_NAME, "manifest", f"expected format_version {FORMAT_VERSION} and algorithm sha256")
    files = manifest.get("files")
    if not isinstance(files, list):
        fail(MANIFEST_NAME, "manifest", "`files` must be a list")
        return None
    good, seen = [], set()
    for i, entry in enumerate(files):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and type(entry.get("size")) is int and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and SHA256_RE.fullmatch(entry["sha256"])):
            fail(MANIFEST_NAME, "manifest", f"files[{i}] must be {{path, size, sha256}} with a 64-hex sha256")
            continue
        name = entry["path"]
        pure = PurePosixPath(name)
        if name == "" or pure.is_absolute() or ".." in pure.parts or "\\" in name or name.startswith("~") or "\x00" in name:
            fail(name, "manifest", "unsafe path in the manifest (absolute, '..' or backslash)")
            continue
        if name in seen:
            fail(name, "manifest", "listed twice in the manifest")
            continue
        seen.add(name)
        good.append(entry)
    if manifest.get("root_digest") != root_digest(good) or len(good) != len(files):
        fail(MANIFEST_NAME, "root-digest", "root digest does not match the manifest entries")
    manifest = dict(manifest, files=good)
    if not isinstance(manifest.get("root_digest"), str):
        manifest["root_digest"] = None
    return manifest


def check_file_set(contents: dict, entries: dict, on_disk: dict, fail) -> None:
    """The files present equal the manifest: missing, extra and renamed files are named."""
    missing = sorted(p for p in entries if p not in on_disk)
    extra = sorted(set(on_disk) - set(entries) - {SIGNATURE_NAME})  # the signature signs the manifest: never in it
    sizes = {entries[m]["size"] for m in missing}
    extra_hashes = {p: contents["sha256"](p) for p in extra if on_disk[p] in sizes}
    renamed_to = set()
    for relative in missing:
        renamed = next((p for p, h in extra_hashes.items() if h == entries[relative]["sha256"] and p not in renamed_to), None)
        if renamed:
            renamed_to.add(renamed)
            fail(relative, "file-set", f"renamed to {renamed}")
        else:
            fail(relative, "file-set", "listed in the manifest but missing")
    for relative in extra:
        if relative not in renamed_to:
            fail(relative, "file-set", "not listed in the manifest (extra file)")


def check_file(contents: dict, relative: str, entry: dict, fail) -> None:
    size = contents["files"][relative]
    if size != entry["size"]:
        fail(relative, "size", f"size {size} bytes, manifest says {entry['size']}")
        return
    try:
        if contents["sha256"](relative) != entry["sha256"]:
            fail(relative, "sha256", "sha256 differs from the manifest (the file changed)")
    except OSError as error:
        fail(relative, "read", f"cannot read: {error.strerror}")


def check_metadata(contents: dict, fail) -> dict | None:
    try:
        metadata = json.loads(contents["read"]("metadata.json").decode("utf-8"))
    except (OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        fail("metadata.json", "metadata", f"not valid JSON ({error})")
        return None
    if not isinstance(metadata, dict):
        fail("metadata.json", "metadata", "expected a JSON object")
        return None
    for key, kind in METADATA_SCHEMA.items():
        if key not in metadata:
            fail("metadata.json", "metadata", f"missing key `{key}`")
        elif not isinstance(metadata[key], kind) or (kind is int and isinstance(metadata[key], bool)):
            fail("metadata.json", "metadata", f"`{key}` must be {kind.__name__}")
    return metadata


def check_safetensors(contents: dict, relative: str, fail) -> dict | None:
    """Parse the header by hand: dtypes, shapes and offsets consistent, ranges contiguous, size exact."""
    size = contents["files"][relative]
    try:
        head = contents["head"](relative, 8)
        if len(head) < 8:
            fail(relative, "safetensors", "truncated: shorter than the 8-byte header length")
            return None
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_HEADER, size - 8):
            fail(relative, "safetensors", f"header length {header_len} exceeds the file ({size} bytes)")
            return None
        raw = contents["head"](relative, 8 + header_len)[8:]
    except (OSError, KeyError) as error:
        fail(relative, "read", f"cannot read: {error}")
        return None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        fail(relative, "safetensors", "header is not valid UTF-8 JSON")
        return None
    if not isinstance(header, dict):
        fail(relative, "safetensors", "header is not a JSON object")
        return None
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        fail(relative, "safetensors", "__metadata__ must map names to strings (the safetensors library refuses others)")
        return None
    tensors, ranges = {}, []
    for name, info in header.items():
        if not (isinstance(info, dict) and info.get("dtype") in DTYPE_SIZES and isinstance(info.get("shape"), list)
                and all(type(d) is int and d >= 0 for d in info["shape"])
                and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
                and all(type(o) is int and o >= 0 for o in info["data_offsets"])):
            fail(relative, "safetensors", f"tensor {name!r}: bad dtype, shape or data_offsets")
            return None
        begin, end = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= d
        if end - begin != numel * DTYPE_SIZES[info["dtype"]]:
            fail(relative, "safetensors", f"tensor {name!r}: offsets span {end - begin} bytes, "
                                          f"shape {info['shape']} of {info['dtype']} needs {numel * DTYPE_SIZES[info['dtype']]}")
            return None
        tensors[name] = info["shape"]
        ranges.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            fail(relative, "safetensors", f"tensor {name!r}: data at byte {begin}, expected {position} (overlap or gap)")
            return None
        position = end
    if 8 + header_len + position != size:
        fail(relative, "safetensors", f"file is {size} bytes, header describes {8 + header_len + position}")
        return None
    problem = reference_parser_problem(contents, relative, 8 + header_len, size)
    if problem:
        fail(relative, "safetensors", f"the safetensors library refuses it: {problem}")
        return None
    return tensors


def reference_parser_problem(contents: dict, relative: str, header_end: int, size: int) -> str | None:
    """Open the file with the safetensors library too (its Rust parser, no torch), so that verify never passes
    a file the loaders refuse. A bundle member is parsed from its header in a sparse file of the same size."""
    import tempfile

    from safetensors import safe_open

    try:
        if contents.get("path") is not None:
            with safe_open(str(contents["path"] / relative), framework="numpy"):
                return None
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as sparse:
            sparse.write(contents["head"](relative, header_end))
            sparse.truncate(size)
            sparse.flush()
            with safe_open(sparse.name, framework="numpy"):
                return None
    except Exception as error:  # the library's own error type varies by version: any refusal is a failure
        return str(error).splitlines()[0][:200]


def check_adapter_config(contents: dict, tensors: dict, fail) -> None:
    """adapter_config.json agrees with the tensors: LoRA, targets, ranks."""
    try:
        config = json.loads(contents["read"]("adapter_config.json").decode("utf-8"))
    except (OSError, KeyError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        fail("adapter_config.json", "adapter", f"not valid JSON ({error})")
        return
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or type(config.get("r")) is not int:
        fail("adapter_config.json", "adapter", "expected a PEFT LoRA config with an integer `r`")
        return
    targets = config.get("target_modules")
    rank_pattern = config.get("rank_pattern") or {}
    lora = {n: s for n, s in tensors.items() if ".lora_A." in n or ".lora_B." in n}
    if not lora:
        fail("adapter_model.safetensors", "adapter", "no LoRA tensors (lora_A / lora_B) in the file")
        return
    for name, shape in lora.items():
        module = name.split(".lora_")[0].removeprefix("base_model.model.")
        if not targets_module(targets, module):
            fail("adapter_config.json", "adapter", f"tensor {name} is on module {module!r}, which target_modules does not name")
        rank = next((r for key, r in rank_pattern.items() if module.endswith(key)), config["r"])
        axis = 0 if ".lora_A." in name else 1
        if len(shape) != 2 or shape[axis] != rank:
            fail("adapter_model.safetensors", "adapter", f"tensor {name} has shape {shape}; rank {rank} expected on axis {axis}")
    for name in lora:
        partner = name.replace(".lora_A.", ".lora_B.") if ".lora_A." in name else name.replace(".lora_B.", ".lora_A.")
        if partner not in lora:
            fail("adapter_model.safetensors", "adapter", f"tensor {name} has no {partner}")


def targets_module(targets, module: str) -> bool:
    """PEFT's matching: a list entry names the module or its last dotted parts; a string is a regex."""
    if isinstance(targets, str):
        try:
            return re.fullmatch(targets, module) is not None or module.endswith("." + targets)
        except re.error:
            return False
    if isinstance(targets, list):
        return any(isinstance(t, str) and (module == t or module.endswith("." + t)) for t in targets)
    return False


def check_base(base: Path, metadata: dict, fail) -> None:
    """The given base model folder's files match the hashes recorded at training time."""
    recorded = (metadata.get("base_model") or {}).get("files")
    if not isinstance(recorded, dict) or not recorded:
        fail("metadata.json", "base", "records no base model file hashes")
        return
    for name, digest in sorted(recorded.items()):
        path = base / name
        if not isinstance(name, str) or PurePosixPath(name).name != name or name in ("", ".", "..") or "\\" in name:
            fail(f"base:{name}", "base", "not a plain file name: metadata.json may only name files inside the base folder")
            continue
        if not path.is_file():
            fail(f"base:{name}", "base", f"missing from {base}")
        elif sha256_file(path) != digest:
            fail(f"base:{name}", "base", "sha256 differs from the one recorded at training time")


def print_results(results: list[dict], as_json: bool) -> None:
    """A rich table per version for people; one JSON document for machines."""
    if as_json:
        print(json.dumps({"verified": all(r["verified"] for r in results), "versions": results}, indent=2))
        return
    from rich.table import Table

    from qrtrain.terminal import table_console

    console = table_console()
    for result in results:
        for note in result.get("notes", []):
            console.print(f"note: {note}")
        signature = result.get("signature") or {}
        if signature.get("state") in ("valid", "present"):
            console.print(f"signature: {signature['message']} ({signature['signer']})")
        if result["verified"]:
            console.print(f"[green]verified[/] {result['path']}: {result['files']} files, root digest {result['root_digest']}"
                          + (", signed" if signature.get("state") == "valid" else ""))
            continue
        table = Table(title=f"FAILED {result['path']}", title_style="bold red", title_justify="left")
        for column in ("file", "check", "problem"):
            table.add_column(column, overflow="fold")
        for problem in result["problems"]:
            table.add_row(str(problem["file"]), problem["check"], problem["message"])
        console.print(table)


def verify(path: Path, base: Path | None = None, as_json: bool = False, trust: TrustWith | None = None) -> int:
    """Verify and print; the exit code (0 verified, 1 a check failed, 3 only the signature failed)."""
    if base is not None and not Path(base).is_dir():
        raise QrtrainError(f"--base {base}: no such model folder")
    for label, given in (("--key", [trust.key] if trust and trust.key else []),
                         ("--certificate-chain", trust.chain if trust else [])):
        for file in given:
            if not Path(file).is_file():
                raise QrtrainError(f"{label} {file}: no such file")
    results = verify_path(path, base, trust)
    print_results(results, as_json)
    return exit_code(results)


def exit_code(results: list[dict]) -> int:
    """0 every version verified; 3 only signature checks failed; 1 any other check failed."""
    problems = [p for r in results for p in r["problems"]]
    if not problems:
        return 0
    return 3 if all(p["check"] == "signature" for p in problems) else 1
