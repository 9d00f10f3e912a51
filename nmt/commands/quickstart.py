"""The main job, end to end on the bundled default (Multi30k en->de from ../shared/data).

Each step is an ordinary ``nmt`` command run as a subprocess, so this file doubles as the
recipe a user would type: prepare -> train -> evaluate (sacreBLEU) -> export -> serve ->
translate through the HTTP endpoint -> stop the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from nmt.errors import UserError

SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 30.0
DEMO_SENTENCES = 3


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt quickstart", description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml", help="training config")
    parser.add_argument("--data", default="data/multi30k.en-de", help="prepared corpus directory")
    parser.add_argument(
        "--workdir",
        default="runs/quickstart",
        help="each run writes its checkpoints, logs, evaluation and bundle to a new "
        "run-<date>-<time> directory here, so a rerun never meets an earlier run's files",
    )
    parser.add_argument("--beam-size", type=int, default=5)
    return parser.parse_args(argv)


def _nmt(*args: str) -> None:
    """Run one ``nmt`` subcommand in a child process; stop the pipeline if it fails."""
    command = [sys.executable, "-m", "nmt.cli", *args]
    print(f"\n$ nmt {' '.join(args)}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise UserError(f"step failed: nmt {' '.join(args)}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(url: str, payload: dict | None = None, timeout: float = 60.0) -> bytes:
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as r:
        return r.read()


def _wait_until_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"the server exited with code {server.returncode} while starting")
        try:
            _request(f"{url}/health", timeout=2.0)
            return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"the server did not answer {url}/health within {SERVER_START_TIMEOUT_S} s")


def _stop(server: subprocess.Popen) -> None:
    """SIGINT stops LitServe and its workers; whatever is left of the server's process group
    after that (or after a timeout) is killed, so nothing outlives the quickstart."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


def _serve_and_translate(bundle: Path, sentences: list[str], beam_size: int) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "nmt.cli", "serve", "--translate", str(bundle)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    print(f"\n$ nmt {' '.join(command[3:])} &", flush=True)
    server = subprocess.Popen(command, start_new_session=True)  # its own process group
    try:
        _wait_until_healthy(url, server)
        print(f"\n$ POST {url}/translate", flush=True)
        reply = json.loads(
            _request(f"{url}/translate", {"text": sentences, "beam_size": beam_size})
        )
        for source, result in zip(sentences, reply["translations"], strict=True):
            print(f"  en: {source}\n  de: {result['text']}  (score {result['score']:.3f})")
    finally:
        _stop(server)


def _best_checkpoint(directory: Path) -> Path:
    """The best-validation-BLEU checkpoint the training run kept (``best-step=N.ckpt``)."""
    best = sorted(directory.glob("best-*.ckpt"), key=lambda path: path.stat().st_mtime)
    if not best:
        raise UserError(f"training wrote no best-*.ckpt in {directory}")
    return best[-1]


def _unfinished_budget(config: str | Path, checkpoints: Path) -> str | None:
    """A note when training ended before the config's ``trainer.max_steps`` (its ``max_time``
    guard fired on a slow or busy machine): the reported BLEU is then not the figure every
    whole run reproduces, and the summary must say so."""
    import yaml

    from nmt.checkpoints import load_checkpoint_file

    budget = (yaml.safe_load(Path(config).read_text()).get("trainer") or {}).get("max_steps", -1)
    if budget is None or budget <= 0:  # a config whose budget is in epochs: nothing to compare
        return None
    updates = load_checkpoint_file(checkpoints / "last.ckpt")["global_step"]
    if updates >= budget:
        return None
    return (
        f"NOTE: training stopped at update {updates} of the budget's {budget}: a guard in "
        f"{config} (trainer.max_time, on a slow or busy machine) ended it first, so the BLEU "
        "above is lower than a whole run's. Rerun on an idle machine or raise trainer.max_time."
    )


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    workdir = Path(args.workdir) / time.strftime("run-%Y%m%d-%H%M%S")
    if workdir.exists():
        raise UserError(f"{workdir} already exists; start the quickstart again in a second")
    started = time.monotonic()
    _nmt(
        "prep",
        "translation",
        "--corpus",
        "multi30k",
        "--src",
        "en",
        "--tgt",
        "de",
        "--out",
        args.data,
    )
    _nmt(
        "fit",
        "--config",
        args.config,
        "--data.init_args.corpus",
        args.data,
        "--trainer.logger.init_args.save_dir",
        str(workdir),
        "--checkpoint.dirpath",
        str(workdir / "checkpoints"),
    )
    checkpoint = _best_checkpoint(workdir / "checkpoints")
    _nmt(
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--corpus",
        args.data,
        "--split",
        "test_2016_flickr",
        "--beam-size",
        str(args.beam_size),
        "--out-dir",
        str(workdir / "evaluation"),
    )
    bundle = workdir / "bundle"
    _nmt("export", str(checkpoint), str(bundle))
    from nmt.corpus import PreparedCorpus

    sentences = PreparedCorpus(args.data).split("test_2016_flickr")["src_text"][:DEMO_SENTENCES]
    _serve_and_translate(bundle, sentences, args.beam_size)
    print(f"\nquickstart finished in {time.monotonic() - started:.0f} s; outputs in {workdir}/")
    note = _unfinished_budget(args.config, workdir / "checkpoints")
    if note:
        print(note)
    return 0
