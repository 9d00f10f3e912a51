"""End-to-end time and peak memory of `nmt prep translation` on Multi30k en-de.

Each run is a fresh `nmt` process (imports included, as a user sees it) writing to a temporary
directory; its peak resident memory is the operating system's account of that process. The
baseline, measured in this process, is sentencepiece alone trained with the same options on the
same raw training lines: the one step no preparation can skip, so the ratio shows what reading,
cleaning, encoding and writing Arrow add on top of it.

With ``--scale K`` it also prepares the training split repeated K times (each copy's pairs made
distinct by a copy number, so deduplication keeps them) with sentencepiece's sample held at the
size of one copy (``--max-sentences``): memory then stays flat, as nothing else holds the corpus
in memory; sentencepiece's sample is the one part that grows, up to its bound.

    .venv/bin/python benchmarks/prep_speed.py [--scale 8] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 60.0
DATA_DIR = Path("../shared/data/multi30k")


def baseline_seconds(data_dir: Path, src: str, tgt: str) -> float:
    import sentencepiece as spm

    from data_prep.wordpiece_training import WordpieceConfig

    start = time.perf_counter()
    lines: list[str] = []
    for lang in (src, tgt):
        with gzip.open(data_dir / f"train.{lang}.gz", "rt", encoding="utf-8") as handle:
            lines += [line.rstrip("\n") for line in handle]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=io.BytesIO(),
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
        **WordpieceConfig().trainer_options(),
    )
    return time.perf_counter() - start


def prep_run(arguments: list[str], scratch: Path) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, printed summary) of one fresh `nmt prep translation` run."""
    command = [sys.executable, "-m", "nmt.cli", "prep", "translation", *arguments]
    command += ["--out", str(scratch / "out"), "--force"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    output, errors = scratch / "stdout", scratch / "stderr"
    with output.open("w") as stdout, errors.open("w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"prep failed:\n{errors.read_text()}")
    return seconds, usage.ru_maxrss / 1024, output.read_text()


def repeated_train(data_dir: Path, src: str, tgt: str, copies: int, scratch: Path) -> list[str]:
    """`--split` arguments for the training split repeated ``copies`` times, plus val."""
    paths = []
    for lang in (src, tgt):
        with gzip.open(data_dir / f"train.{lang}.gz", "rt", encoding="utf-8") as handle:
            lines = [line.rstrip("\n") for line in handle]
        path = scratch / f"train.x{copies}.{lang}.gz"
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as handle:
            for copy in range(copies):
                handle.writelines(f"{line} ({copy})\n" for line in lines)
        paths.append(path)
    val = [data_dir / f"val.{lang}.gz" for lang in (src, tgt)]
    return [
        "--split", f"train={paths[0]},{paths[1]}", "--split", f"val={val[0]},{val[1]}",
    ]  # fmt: skip


def count_lines(path: Path) -> int:
    with gzip.open(path, "rb") as handle:
        return sum(1 for _ in handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scale", type=int, default=0, help="also run on train x SCALE")
    args = parser.parse_args()
    common = ["--src", args.src, "--tgt", args.tgt, "--num-proc", str(args.num_proc)]

    with tempfile.TemporaryDirectory() as scratch:
        arguments = ["--corpus", "multi30k", "--data-dir", str(args.data_dir), *common]
        seconds, peak_mib, summary = prep_run(arguments, Path(scratch))
    baseline = baseline_seconds(args.data_dir, args.src, args.tgt)
    print(summary)
    print(f"cores: {os.cpu_count()}, load average (1 min): {os.getloadavg()[0]:.1f}")
    print(
        f"nmt prep translation multi30k {args.src}-{args.tgt}, end to end: {seconds:.1f} s "
        f"(target < {TARGET_SECONDS:.0f} s), peak memory {peak_mib:.0f} MiB"
    )
    print(
        f"baseline, sentencepiece training alone on the raw lines: {baseline:.1f} s; "
        f"end to end / baseline = {seconds / baseline:.2f}x"
    )
    if args.scale > 1:
        with tempfile.TemporaryDirectory() as scratch:
            splits = repeated_train(args.data_dir, args.src, args.tgt, args.scale, Path(scratch))
            sample = str(2 * count_lines(args.data_dir / f"train.{args.src}.gz"))
            arguments = ["--corpus", "files", *splits, *common, "--max-sentences", sample]
            big_seconds, big_peak, big_summary = prep_run(arguments, Path(scratch))
        print(f"\n{big_summary}")
        print(
            f"train x{args.scale}: {big_seconds:.1f} s ({big_seconds / seconds:.1f}x the time), "
            f"peak memory {big_peak:.0f} MiB ({big_peak / peak_mib:.2f}x)"
        )


if __name__ == "__main__":
    main()
