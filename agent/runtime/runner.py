"""The process of a training run: a supervisor, and in its child the package's `Main`.

Started by its file path (`python /path/to/runner.py`) in the unpacked package folder, it imports
nothing of ours but `trainyard`. Standard library only.

The supervisor (this process) spawns itself again with `--child` in a process group of its own, and
becomes the subreaper of everything below it (on Linux), so descendants that double-forked into a
session of their own are still its descendants. It forwards SIGTERM/SIGINT to the training
processes, SIGKILLs them after `TRAINYARD_STOP_GRACE` seconds (30 by default), and when the training
process ends it stops whatever it left behind the same way, then exits with the child's status.

The child puts the package folder first on `sys.path`, calls `Main().process_data/train/evaluate/
save` as the pipeline asks, and writes the outcome (JSON, atomically) to `TRAINYARD_OUTCOME`, so the
agent learns it even if it restarted meanwhile. Exit code 0 on success, 1 on failure.

A SIGTERM whose reason (the file `TRAINYARD_STOP_REASON_FILE` names, written by the agent first) is
`max_duration` asks the package to finish instead (`StopAtLimit`): `trainyard.should_stop()` turns
true, `train()` returns (or, in a package that never checks, is interrupted), and `save()` runs, so
the model is kept, its outcome marked `cut_short`. Any other SIGTERM ends the child as it always did.

With `TRAINYARD_STDOUT_LOG` and `TRAINYARD_STDERR_LOG` set, the training processes' stdout and stderr
are pipes the supervisor reads into those files, bounded (`BoundedLog`): each line stamped with the
UTC time it was read, bytes that are not UTF-8 kept as `\\xNN`, the first bytes kept whole, then at most
a budget of bytes a second, and the last bytes at the end; what is dropped is counted in a marker line
where it was. Without them, the child inherits the supervisor's stdout and stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import math
import os
import select
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

PIPELINES = ("training", "evaluation", "full")
DETAIL_LIMIT = 16 * 1024
DEFAULT_GRACE = 30.0
PR_SET_CHILD_SUBREAPER = 36
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
LOG_PATHS = {1: "TRAINYARD_STDOUT_LOG", 2: "TRAINYARD_STDERR_LOG"}
# Sizes of the bounded logs, each overridable by the variable of its name (tests use small ones).
LOG_LIMITS = {
    "TRAINYARD_LOG_HEAD_BYTES": 1024 * 1024,  # kept whole from the start
    "TRAINYARD_LOG_RATE_BYTES": 256 * 1024,  # then at most this a second; also the tail kept at the end
    "TRAINYARD_LOG_MAX_BYTES": 32 * 1024 * 1024,  # past this, only the tail is written, at the end
}
PROCESSES_ENV = "TRAINYARD_PROCESSES"  # more than 1: torch.distributed.run, one worker per process
SUPERVISOR_ONLY = (*LOG_PATHS.values(), *LOG_LIMITS, PROCESSES_ENV)  # never passed on to the package
MAX_LINE_BYTES = 64 * 1024
LOG_JOIN_SECONDS = 10.0


# -- the outcome ------------------------------------------------------------------------------------


def write_outcome(outcome: dict[str, Any]) -> None:
    """Write `outcome` to `TRAINYARD_OUTCOME` atomically (a temporary file, then os.replace)."""
    path = os.environ.get("TRAINYARD_OUTCOME")
    if not path:
        print(f"trainyard runner: outcome {json.dumps(outcome)}", file=sys.stderr)
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".outcome-", dir=folder)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(outcome, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _outcome(
    status: str, reason_code: str, detail: str = "", evaluation: Any = None, stage_times: Any = None
) -> dict[str, Any]:
    return {
        "status": status,
        "reason_code": reason_code,
        "detail": detail[-DETAIL_LIMIT:],
        "evaluation": evaluation,
        "stage_times": stage_times or {},
    }


def _evaluation(result: object) -> Any:
    """The evaluation result as JSON: a number becomes {"score": x}; what JSON cannot hold is None."""
    if isinstance(result, int | float) and not isinstance(result, bool):
        result = {"score": result}
    try:
        return json.loads(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError):
        return None


# -- the child: the package's code ------------------------------------------------------------------


class InvalidPackage(Exception):
    """The package breaks the contract (no train.py, no Main, Main without train or save...)."""


def _import_main() -> type:
    if not os.path.isfile("train.py"):
        raise InvalidPackage(f"the package has no train.py (in {os.getcwd()})")
    try:
        module = importlib.import_module("train")
    except SyntaxError as error:
        raise InvalidPackage("train.py could not be compiled:\n" + _format(error)) from error
    main = getattr(module, "Main", None)
    if not isinstance(main, type):
        raise InvalidPackage("train.py has no class Main")
    missing = [name for name in ("train", "save") if not callable(getattr(main, name, None))]
    if missing:
        raise InvalidPackage(f"train.Main has no {' or '.join(missing)} method")
    return main


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


# -- UiPath's full pipeline: `process_data` splits the input into these folders ----------------------


def _split_directories(pipeline: str) -> dict[str, str]:
    """The folders of a full pipeline's split, made now by the run's user so that `process_data` can
    write them: `training_data_directory`, and `test_data_directory` (an empty folder, or the test
    dataset the template names). The agent puts them in the run's folder, outside the package, so
    the split never ships in the trained version (docs/pipelines.md)."""
    if pipeline != "full":
        return {}
    found = {}
    for name in ("training_data_directory", "test_data_directory"):
        path = os.environ.get(name)
        if path:
            os.makedirs(path, exist_ok=True)
            found[name] = path
    return found


def _has_files(path: str) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _split_argument(
    method: str, argument: str, data_directory: str, split: dict[str, str], processed: bool
) -> str:
    """The folder `train` or `evaluate` gets in a full pipeline (else `argument` as it is).

    `train`: what `process_data` wrote into `training_data_directory`, else the input dataset.
    `evaluate`: `test_data_directory`: the test dataset, or the split `process_data` wrote there
    (empty if it wrote none, as in UiPath); a package without `process_data` that names no test
    dataset is evaluated on its input, as before."""
    if method == "train" and "training_data_directory" in split:
        training = split["training_data_directory"]
        return training if _has_files(training) else data_directory
    if method == "evaluate" and "test_data_directory" in split:
        test = split["test_data_directory"]
        return test if processed or _has_files(test) else data_directory
    return argument


def run_package(pipeline: str) -> dict[str, Any]:
    """Import and run the package in this process; return the outcome (never raises)."""
    stage_times: dict[str, float] = {}
    report: Callable[..., None] = importlib.import_module("trainyard").report
    try:
        if pipeline not in PIPELINES:
            raise InvalidPackage(f"TRAINYARD_PIPELINE is {pipeline!r}, not one of {', '.join(PIPELINES)}")
        data_directory = os.environ.get("data_directory", "")  # noqa: SIM112 (UiPath's names)
        test_directory = os.environ.get("test_data_directory") or data_directory  # noqa: SIM112
        split = _split_directories(pipeline)
        main = _import_main()
        if pipeline == "evaluation" and not callable(getattr(main, "evaluate", None)):
            raise InvalidPackage("the evaluation pipeline needs train.Main.evaluate, which it lacks")
    except InvalidPackage as error:
        return _outcome("failed", "invalid_package", str(error))
    except BaseException as error:
        return _outcome("failed", "exception", _format(error))

    result: object = None
    limit = StopAtLimit()
    limit.install()
    try:
        model = main()
        steps: list[tuple[str, str, str]] = []  # (stage, method, argument)
        # Under torchrun every worker trains; only rank 0 evaluates and saves (one writer of ./model).
        lead = _rank() == 0
        if pipeline == "full" and callable(getattr(model, "process_data", None)):
            steps.append(("process_data", "process_data", data_directory))
        if pipeline in ("training", "full"):
            steps.append(("training", "train", data_directory))
        if lead and pipeline in ("evaluation", "full") and callable(getattr(model, "evaluate", None)):
            steps.append(("evaluation", "evaluate", test_directory))
        if lead and pipeline in ("training", "full"):
            steps.append(("saving", "save", ""))
        for stage, method, argument in steps:
            if limit.skips(stage):
                continue
            report(stage=stage)
            argument = _split_argument(method, argument, data_directory, split, "process_data" in stage_times)
            started = time.monotonic()
            try:
                value = limit.call(stage, getattr(model, method), argument)
            finally:
                stage_times[stage] = round(time.monotonic() - started, 6)
            if method == "evaluate":
                result = value
    except BaseException as error:
        return _outcome("failed", "exception", _format(error), stage_times=stage_times)
    succeeded = _outcome("succeeded", "completed", evaluation=_evaluation(result), stage_times=stage_times)
    return limit.outcome(succeeded)


# -- a stop at the maximum duration ------------------------------------------------------------------

STOP_REASON_ENV = "TRAINYARD_STOP_REASON_FILE"
MAX_DURATION = "max_duration"


class CutShort(BaseException):
    """Raised in `train()` of a package that never calls `trainyard.should_stop()`, at a stop for the
    maximum duration: training ends there and the model is saved as it is (a BaseException, so a
    package's `except Exception` does not swallow it)."""


class StopAtLimit:
    """What a SIGTERM does to the package's process. Its reason `max_duration`: `should_stop()` turns
    true and, in `train()` of a package that never checked it, `CutShort` is raised; then only the
    save of what was trained is left. Any other reason (a person's stop): SIGTERM's default, as before."""

    def __init__(self) -> None:
        self.asked = False  # the run was asked to finish at its maximum duration
        self.training = False  # `train()` is running now
        self.trained = False  # `train()` returned, or was cut short

    def install(self) -> None:
        if os.environ.get(STOP_REASON_ENV):
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _reason(self) -> str:
        try:
            with open(os.environ.get(STOP_REASON_ENV) or "", encoding="utf-8") as file:
                return file.read(64).strip()
        except (OSError, ValueError):
            return ""

    def _on_sigterm(self, signum: int, frame: object) -> None:
        if self._reason() != MAX_DURATION:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.asked:
            return
        self.asked = True
        checks = importlib.import_module("trainyard")._ask_to_stop()
        if self.training and not checks:
            raise CutShort

    def skips(self, stage: str) -> bool:
        """Asked to finish: every stage but the save of a trained model is skipped."""
        return self.asked and not (stage == "saving" and self.trained)

    def call(self, stage: str, method: Callable[..., object], argument: str) -> object:
        if stage == "saving":
            return method()
        if stage != "training":
            return method(argument)
        self.training = True
        try:
            try:
                return method(argument)
            finally:
                self.training = False  # a CutShort raised before this line is still caught below
        except CutShort:
            return None
        finally:
            self.trained = True

    def outcome(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """The outcome of a run asked to finish: kept and marked `cut_short` once trained and saved."""
        if not self.asked:
            return outcome
        if not self.trained:
            return _outcome("failed", MAX_DURATION, "the maximum duration came before training began")
        return {**outcome, "cut_short": MAX_DURATION}


def child_main() -> int:
    # The package folder first, so its own runner.py, agent.py... win; then the folder of `trainyard`.
    cwd = os.getcwd()
    sys.path[:] = [cwd, RUNTIME_DIR] + [p for p in sys.path if p not in ("", cwd, RUNTIME_DIR)]
    outcome = run_package(os.environ.get("TRAINYARD_PIPELINE", "training"))
    # The package's objects are unreachable now, but what sits in reference cycles lives on until
    # the interpreter's exit: a DistributedDataParallel model and the process group it holds among
    # them, and torch 2.13's gloo then aborts a worker about one exit in twenty, failing the run.
    # Freed here, while the interpreter is whole, they go quietly (docs/agent.md).
    gc.collect()
    # The reports still queued are stored now: torch's gloo can abort a worker at its exit (above),
    # before the interpreter's own flush at exit.
    importlib.import_module("trainyard").flush()
    sys.stdout.flush()
    sys.stderr.flush()
    if _rank() == 0:
        write_outcome(outcome)
    elif outcome["status"] != "succeeded":  # torchrun shows a worker's failure on stderr
        print(outcome["detail"], file=sys.stderr)
    return 0 if outcome["status"] == "succeeded" else 1


def _rank() -> int:
    """This process's rank under torchrun (0 outside it)."""
    try:
        return int(os.environ.get("RANK") or 0)
    except ValueError:
        return 0


def _child_argv(script: str) -> list[str]:
    """The training process: this script with `--child`, or torchrun starting one per process."""
    try:
        processes = int(os.environ.get(PROCESSES_ENV) or 1)
    except ValueError:
        processes = 1
    if processes <= 1:
        return [sys.executable, script, "--child"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        script,
        "--child",
    ]


# -- the bounded logs --------------------------------------------------------------------------------


def _stamp(moment: float) -> bytes:
    whole = int(moment)
    micros = int((moment - whole) * 1_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z ").encode()


def _limit(name: str) -> int:
    try:
        return max(1, int(os.environ.get(name, LOG_LIMITS[name])))
    except ValueError:
        return LOG_LIMITS[name]


class BoundedLog:
    """Reads one pipe to its end and writes it to `path` as stamped lines, within bounds."""

    def __init__(self, fd: int, path: str, stream: str) -> None:
        self.fd, self.path, self.stream = fd, path, stream
        self.head = _limit("TRAINYARD_LOG_HEAD_BYTES")
        self.rate = _limit("TRAINYARD_LOG_RATE_BYTES")
        self.cap = max(_limit("TRAINYARD_LOG_MAX_BYTES"), self.head)
        self.written = 0
        self.budget = self.rate
        # Lines over this second's budget (with the size they had in the pipe), the newest `rate` bytes.
        self.held: list[tuple[bytes, int]] = []
        self.held_bytes = 0
        self.dropped_bytes = self.dropped_lines = 0
        self.thread = threading.Thread(target=self._run, name=f"log {stream}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        with open(self.path, "ab", buffering=0) as out:
            self.out = out
            rest = b""
            tick = time.monotonic() + 1.0
            while True:
                ready = _readable(self.fd, max(0.0, tick - time.monotonic()))
                chunk = os.read(self.fd, 65536) if ready else None
                if chunk == b"":
                    break
                if chunk:
                    rest = self._lines(rest + chunk, time.time())
                if time.monotonic() >= tick:
                    tick = time.monotonic() + 1.0
                    self.budget = self.rate
                    if self.written < self.cap:
                        self._release()
            if rest:
                self._lines(rest + b"\n", time.time())
            self._release()
        os.close(self.fd)

    def _lines(self, data: bytes, moment: float) -> bytes:
        """Take the whole lines of `data` (a line too long is cut), return what is left of it."""
        flooding = self.written >= self.head and (self.held or self.written >= self.cap)
        if flooding and len(data) > 2 * self.rate:
            # Only the newest `rate` bytes can be kept: drop the lines before them without looking.
            cut = data.rfind(b"\n", 0, len(data) - self.rate) + 1
            self.dropped_bytes += cut
            self.dropped_lines += data.count(b"\n", 0, cut)
            data = data[cut:]
        *lines, rest = data.split(b"\n")
        while len(rest) > MAX_LINE_BYTES:
            lines.append(rest[:MAX_LINE_BYTES])
            rest = rest[MAX_LINE_BYTES:]
        stamp = _stamp(moment)
        direct: list[bytes] = []
        for raw in lines:
            for start in range(0, max(len(raw), 1), MAX_LINE_BYTES):
                text = raw[start : start + MAX_LINE_BYTES].removesuffix(b"\r")
                line = stamp + text.decode("utf-8", "backslashreplace").encode() + b"\n"
                self._take(line, len(text) + 1, direct)
        if direct:
            self.out.write(b"".join(direct))
        return rest

    def _take(self, line: bytes, raw_size: int, direct: list[bytes]) -> None:
        size = len(line)
        if self.written < self.head or (not self.held and self.written < self.cap and size <= self.budget):
            if self.written >= self.head:
                self.budget -= size
            self.written += size
            direct.append(line)
            return
        self.held.append((line, raw_size))
        self.held_bytes += size
        while self.held_bytes > self.rate and len(self.held) > 1:
            gone, gone_size = self.held.pop(0)
            self.held_bytes -= len(gone)
            self.dropped_bytes += gone_size
            self.dropped_lines += 1

    def _release(self) -> None:
        """Write what is held, after a line saying what was dropped before it."""
        out = []
        if self.dropped_bytes:
            note = (
                f"[trainyard] {self.dropped_bytes} bytes in {self.dropped_lines} lines of {self.stream} "
                f"dropped here: the log keeps its first {self.head} bytes, then at most {self.rate} bytes "
                f"a second up to {self.cap} bytes, and its last {self.rate} bytes"
            )
            out.append(_stamp(time.time()) + note.encode() + b"\n")
            self.dropped_bytes = self.dropped_lines = 0
        out.extend(line for line, _ in self.held)
        self.held, self.held_bytes = [], 0
        if out:
            data = b"".join(out)
            self.written += len(data)
            self.budget -= len(data)
            self.out.write(data)


def _readable(fd: int, timeout: float) -> bool:
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    except InterruptedError:
        return False


# -- the supervisor -----------------------------------------------------------------------------------


def _become_subreaper() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(root: int) -> list[int]:
    """The live (not zombie) processes below `root`, from /proc (empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 2 or fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [root]
    while queue:
        for pid in children.get(queue.pop(), []):
            found.append(pid)
            queue.append(pid)
    return found


class Supervisor:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.child = 0
        self.child_status: int | None = None
        self.stopping = False
        self.deadline: float | None = None  # when what is left gets SIGKILL
        self.killed = False
        self.logs: list[BoundedLog] = []

    def spawn(self) -> None:
        env = dict(os.environ)
        # A package's own subprocesses (torchrun workers, spawned helpers) can `import trainyard` too.
        python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if RUNTIME_DIR not in python_path:
            env["PYTHONPATH"] = os.pathsep.join([*python_path, RUNTIME_DIR])
        for name in SUPERVISOR_ONLY:
            env.pop(name, None)
        argv = _child_argv(os.path.abspath(__file__))
        pipes: dict[int, tuple[int, int]] = {}
        try:
            for target, variable in LOG_PATHS.items():
                if os.environ.get(variable):
                    pipes[target] = os.pipe()  # not inheritable: only the dup2 below reaches the child
            self.child = os.posix_spawn(
                sys.executable,
                argv,
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, write, target) for target, (_, write) in pipes.items()],
                setpgroup=0,
                setsigmask=(),
                setsigdef=(signal.SIGTERM, signal.SIGINT, signal.SIGCHLD),
            )
        except BaseException:
            for read, write in pipes.values():
                os.close(read)
                os.close(write)
            raise
        for target, (read, write) in pipes.items():
            os.close(write)
            log = BoundedLog(read, os.environ[LOG_PATHS[target]], "stdout" if target == 1 else "stderr")
            log.start()  # after the signals were blocked: the threads inherit the mask
            self.logs.append(log)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.child_status = status

    def signal_all(self, signum: int) -> None:
        """`signum` once to every process of the run: the training's group, then whoever left it."""
        group_signalled = False
        if self.child_status is None:
            with contextlib.suppress(OSError):
                os.killpg(self.child, signum)
                group_signalled = True
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                if not (group_signalled and os.getpgid(pid) == self.child):
                    os.kill(pid, signum)

    def stop(self) -> None:
        """SIGTERM to every process of the run; SIGKILL after the grace."""
        if self.stopping:
            return
        self.stopping = True
        self.deadline = time.monotonic() + self.grace
        self.signal_all(signal.SIGTERM)

    def run(self) -> int:
        waited = {signal.SIGCHLD, *STOP_SIGNALS}
        signal.signal(signal.SIGCHLD, lambda *_: None)  # never discarded while blocked
        signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        with contextlib.suppress(OSError):  # a stale outcome must not pass for this run's
            os.unlink(os.environ.get("TRAINYARD_OUTCOME") or "")
        _become_subreaper()
        try:
            self.spawn()
        except OSError as error:
            write_outcome(_outcome("failed", "exception", f"could not start the training process: {error}"))
            return 1
        while True:
            self.reap()
            if self.child_status is not None:
                if not descendants(os.getpid()):
                    self.reap()
                    break
                self.stop()  # the training process ended: what it left behind is stopped too
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                self.killed = True
                self.signal_all(signal.SIGKILL)
                timeout = 0.05
            elif self.child_status is not None:
                # Leftovers that are not our children wake nobody when they end: look again soon.
                timeout = 0.05 if self.deadline is None else min(0.05, self.deadline - now)
            else:
                timeout = 60.0 if self.deadline is None else max(0.0, self.deadline - now)
            info = signal.sigtimedwait(waited, timeout)
            if info is not None and info.si_signo in STOP_SIGNALS:
                self.stop()
        deadline = time.monotonic() + LOG_JOIN_SECONDS
        for log in self.logs:  # every writer of the pipes is gone: they end at once
            log.join(max(0.0, deadline - time.monotonic()))
        return self.exit_code()

    def exit_code(self) -> int:
        status = self.child_status
        assert status is not None
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            ended = f"the training process exited with code {code} before writing its outcome"
        else:
            code = 128 + (os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0)
            name = signal.Signals(code - 128).name if code > 128 else "a signal"
            ended = f"the training process was killed by {name}"
        # Ended before it could write the outcome: SIGKILL, a crash, no handler for SIGTERM, os._exit.
        path = os.environ.get("TRAINYARD_OUTCOME")
        missing = bool(path) and not os.path.exists(path or "")
        if missing:
            with contextlib.suppress(Exception):
                asked = " (the run was asked to stop)" if self.stopping and not self.killed else ""
                write_outcome(_outcome("failed", "exit_nonzero", ended + asked))
        return 1 if missing and code == 0 else code


def _grace() -> float:
    try:
        grace = float(os.environ.get("TRAINYARD_STOP_GRACE", DEFAULT_GRACE))
    except ValueError:
        return DEFAULT_GRACE
    return grace if math.isfinite(grace) and grace >= 0 else DEFAULT_GRACE


def main(argv: list[str]) -> int:
    if argv[1:2] == ["--child"]:
        return child_main()
    return Supervisor(_grace()).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
