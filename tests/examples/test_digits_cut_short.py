"""The reference digits package at its run's maximum duration (issue 18, item 1): the runner's stop with
reason `max_duration` turns `trainyard.should_stop()` true, the epoch loop ends after the epoch in hand,
and `save()` keeps the model. Real torch on the CPU, through the runner as the agent starts it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from agent.telemetry import read_spool
from tests.examples.conftest import PACKAGES, RUNNER, copy_package

EPOCHS = 10_000  # far more than the run is given: only the stop ends it
PATIENCE = 300.0  # a bound on waiting for the first epoch on a busy machine, never a speed check


def test_digits_stops_after_the_epoch_in_hand_and_saves(digits_data: Path, tmp_path: Path) -> None:
    folder = copy_package(PACKAGES / "digits-classifier", tmp_path / "run")
    run_folder = folder.parent
    parameters = {"epochs": EPOCHS, "seed": 0}
    (run_folder / "parameters.json").write_text(json.dumps(parameters))
    reason = run_folder / "stop-reason"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RANK", "TRAINYARD_SPOOL", "PYTHONPATH")},
        "epochs": str(EPOCHS),
        "seed": "0",
        "data_directory": str(digits_data / "train"),
        "test_data_directory": str(digits_data / "test"),
        "artifacts_directory": str(run_folder / "artifacts"),
        "augmentation": "none",
        "save_training_data": "false",
        "TRAINYARD_PIPELINE": "training",
        "TRAINYARD_OUTCOME": str(run_folder / "outcome.json"),
        "TRAINYARD_SPOOL": str(run_folder / "spool.jsonl"),
        "TRAINYARD_PARAMETERS_FILE": str(run_folder / "parameters.json"),
        "TRAINYARD_STOP_REASON_FILE": str(reason),
        "TRAINYARD_STOP_GRACE": "300",
    }
    process = subprocess.Popen([sys.executable, str(RUNNER)], cwd=folder, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + PATIENCE
        spool = run_folder / "spool.jsonl"
        while not (spool.exists() and any(r["series"] for r in read_spool(spool))):
            assert process.poll() is None, "the run ended before its first epoch"
            assert time.monotonic() < deadline, "no epoch was reported"
            time.sleep(0.05)
        reason.write_text("max_duration\n")  # as the agent does, before its SIGTERM
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=PATIENCE)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    outcome = json.loads((run_folder / "outcome.json").read_text())
    assert code == 0, outcome["detail"]
    assert (outcome["status"], outcome["cut_short"]) == ("succeeded", "max_duration")
    epochs = [r for r in read_spool(spool) if r["series"]]
    assert 1 <= len(epochs) < EPOCHS
    checkpoint = torch.load(folder / "model.pt", weights_only=False)
    assert checkpoint["epochs_trained"] == len(epochs)  # the epoch in hand finished, then the save
