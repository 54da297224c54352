"""What tracing costs per request, in CPU time rather than throughput (which the other jobs on
a 2-core machine make noisy). The production WSGI app is called in-process, one request after
another, with the gateway benchmark's /v1/chat/completions against the fake upstream; the
process's CPU time (all its threads: the span processor's export thread too) is divided by the
requests.

Each variant runs in its own long-lived process: tracing off, tracing on (OTLP to a closed port,
as `bench_gateway.py --tracing`), and optionally on with sampling, without some
instrumentations, or the same two of another checkout (`--compare DIR`, for before/after). The
processes take turns, a chunk of requests each in a random order, so that a burst of load from
elsewhere falls on all of them alike; the cost is the median over chunks of on/off in the same
round.

    python bench/bench_tracing_cpu.py [--chunks 20] [--chunk 100] [--sampled 0.1]
        [--disable redis,psycopg] [--compare ../other-checkout ...] [--profile on] [--callgrind] [--off-only] [--reuse]

`--callgrind` runs the processes under valgrind and counts the instructions of each chunk,
which the machine's load does not change (use few chunks: it is 50 times slower).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/llm_bench_tracing_cpu")
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")

from bench.bench_gateway import BODY, _env, _prepare_database, _tracing_env  # noqa: E402
from bench.common import BIN, ROOT, start_fake_upstream, stop  # noqa: E402


def _child(warmup: int, profile: bool) -> None:
    """The measured process (DJANGO_SETTINGS_MODULE and the tracing variables are set): reads a
    number of requests per line on stdin, serves them, answers a JSON line of CPU per request."""
    import platform

    # This checkout's `platform` package, whichever one the virtual environment's .pth names.
    platform.__path__ = [str(ROOT / "platform")]  # type: ignore[attr-defined]
    # The answers get the real stdout; anything the app prints goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    from platform.wsgi import application

    body = json.dumps(BODY).encode()
    secret = os.environ["BENCH_SECRET"]

    def call() -> int:
        statuses: list[str] = []
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/v1/chat/completions",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": f"Bearer {secret}",
            "HTTP_HOST": "127.0.0.1:8000",
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.append(status)
            return lambda data: None

        result = application(environ, start_response)
        for _ in result:
            pass
        if hasattr(result, "close"):
            result.close()
        return int(statuses[0].split()[0])

    for _ in range(warmup):
        status = call()
        assert status == 200, status
    answers.write("ready\n")
    answers.flush()
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    main_thread = threading.main_thread().native_id
    callgrind = os.environ.get("BENCH_CALLGRIND") == "1"
    for line in sys.stdin:
        requests = int(line)
        if callgrind:  # count from here: what came before is in dump 1
            _callgrind_control("--instr=on")
            _callgrind_control("--dump=before")
        threads_before = _thread_cpu()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(requests):
            call()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        threads_after = _thread_cpu()
        if callgrind:  # dump 2: these requests
            _callgrind_control("--dump=requests")
            _callgrind_control("--instr=off")
        names = {t.native_id: t.name for t in threading.enumerate()}
        others = {
            names.get(tid, str(tid)): round(1e6 * (seconds - threads_before.get(tid, 0.0)) / requests, 1)
            for tid, seconds in threads_after.items()
            if tid != main_thread and seconds > threads_before.get(tid, 0.0)
        }
        answers.write(
            json.dumps(
                {"cpu_us": 1e6 * cpu / requests, "wall_us": 1e6 * wall / requests, "threads_us": others}
            )
            + "\n"
        )
        answers.flush()
    if profiler is not None:
        profiler.stop()
        assert profiler.last_session is not None
        profiler.last_session.save(os.environ["BENCH_PROFILE_OUT"])


def _callgrind_control(command: str) -> None:
    """Sends valgrind a command and sleeps until it is done (a busy wait would be counted)."""
    control = subprocess.Popen(
        ["callgrind_control", command, str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while control.poll() is None:
        time.sleep(0.005)


def _thread_cpu() -> dict[int, float]:
    """Seconds of CPU per thread of this process (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that just ended
            continue
        seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return seconds


class _Variant:
    def __init__(
        self,
        name: str,
        *,
        root: Path,
        env: dict[str, str],
        warmup: int,
        profile_out: str | None,
        callgrind_dir: Path | None,
    ) -> None:
        self.name = name
        self.results: list[dict[str, Any]] = []
        self.callgrind_dir = callgrind_dir
        wrapper: list[str] = []
        if profile_out:
            env = {**env, "BENCH_PROFILE": "1", "BENCH_PROFILE_OUT": profile_out}
        if callgrind_dir is not None:
            callgrind_dir.mkdir(parents=True, exist_ok=True)
            for old in callgrind_dir.glob("cg.out*"):
                old.unlink()
            env = {**env, "BENCH_CALLGRIND": "1"}
            wrapper = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                "--separate-threads=yes",
                f"--callgrind-out-file={callgrind_dir / 'cg.out'}",
            ]
        self.process = subprocess.Popen(
            [
                *wrapper,
                str(BIN / "python"),
                str(root / "bench" / "bench_tracing_cpu.py"),
                "--child",
                "--warmup",
                str(warmup),
            ],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL
            if not os.environ.get("BENCH_LOG")
            else open(os.environ["BENCH_LOG"], "ab"),  # noqa: SIM115
            text=True,
        )

    def _stdio(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def ready(self) -> None:
        line = self._stdio()[1].readline()
        if line.strip() != "ready":
            raise SystemExit(f"{self.name}: the measured process failed (BENCH_LOG=<file> keeps its output)")

    def measure(self, requests: int) -> None:
        stdin, stdout = self._stdio()
        stdin.write(f"{requests}\n")
        stdin.flush()
        result = json.loads(stdout.readline())
        if self.callgrind_dir is not None:
            # Dumps 1, 3, 5...: before each chunk; 2, 4, 6...: the chunk, one file per thread.
            part = 2 * len(self.results) + 2
            counts = {
                path.name.rsplit("-", 1)[1]: int(
                    next(
                        line for line in path.read_text().splitlines() if line.startswith("summary:")
                    ).split()[1]
                )
                for path in self.callgrind_dir.glob(f"cg.out.{part}-*")
            }
            result["instructions_main"] = counts.pop("01") / requests
            result["instructions_other"] = sum(counts.values()) / requests
        self.results.append(result)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--chunks", type=int, default=20, help="rounds: each process serves a chunk per round"
    )
    parser.add_argument("--chunk", type=int, default=100, help="requests per chunk")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--sampled", type=float, help="also tracing on with parentbased_traceidratio at this ratio"
    )
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        help="also tracing on with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=this (repeatable)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        help="also tracing off and on in this other checkout (repeatable)",
    )
    parser.add_argument(
        "--profile", help="pyinstrument this variant (on, off, ...) into /tmp/tracing-<variant>.json"
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="also count instructions under valgrind (slow, exact)"
    )
    parser.add_argument(
        "--off-only",
        action="store_true",
        help="only tracing off, in each checkout (the request path's own cost, before/after)",
    )
    parser.add_argument("--reuse", action="store_true", help="keep the previous run's database")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.warmup, profile=os.environ.get("BENCH_PROFILE") == "1")
        return

    upstream, upstream_url = start_fake_upstream()
    variants: list[_Variant] = []
    try:
        env = _env(upstream_url)
        secret_file = ROOT / "var" / "bench-tracing-cpu-secret"
        if args.reuse and secret_file.exists():
            env["BENCH_SECRET"] = secret_file.read_text()
        else:
            env["BENCH_SECRET"] = _prepare_database(env)
            secret_file.parent.mkdir(exist_ok=True)
            secret_file.write_text(env["BENCH_SECRET"])
        on = _tracing_env("on")
        setups: dict[str, tuple[Path, dict[str, str]]] = {
            "off": (ROOT, _tracing_env("off")),
            "on": (ROOT, on),
        }
        if args.sampled is not None:
            setups[f"on, {args.sampled:g} sampled"] = (
                ROOT,
                {
                    **on,
                    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG": str(args.sampled),
                },
            )
        for disabled in args.disable:
            setups[f"on, without {disabled}"] = (
                ROOT,
                {**on, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled},
            )
        for other in args.compare:
            root = other.resolve()
            setups[f"{root.name}: off"] = (root, _tracing_env("off"))
            setups[f"{root.name}: on"] = (root, on)
        for name, (root, extra) in setups.items():
            if args.profile and name != args.profile:
                continue
            if args.off_only and not name.endswith("off"):
                continue
            slug = name.replace(" ", "").replace(",", "-").replace(":", "-")
            variants.append(
                _Variant(
                    name,
                    root=root,
                    env={**env, **extra},
                    warmup=args.warmup,
                    profile_out=f"/tmp/tracing-{slug}.json" if args.profile else None,
                    callgrind_dir=Path(f"/tmp/tracing-callgrind-{slug}") if args.callgrind else None,
                )
            )
        for variant in variants:
            variant.ready()
        for chunk in range(args.chunks):
            for variant in random.sample(variants, len(variants)):
                variant.measure(args.chunk)
            print(
                f"round {chunk + 1:>3}: "
                + ", ".join(f"{v.name} {v.results[-1]['cpu_us']:.0f}" for v in variants)
                + " µs CPU/request",
                flush=True,
            )
        _report(variants, args=args)
    finally:
        for variant in variants:
            variant.close()
        stop(upstream)


def _report(variants: list[_Variant], *, args: argparse.Namespace) -> None:
    by_name = {v.name: v for v in variants}

    def baseline(variant: _Variant) -> _Variant | None:
        """Tracing off in the same checkout."""
        prefix = variant.name.split(": ")[0] + ": " if ": " in variant.name else ""
        off = by_name.get(prefix + "off")
        return off if off is not variant else None

    def line(variant: _Variant, metric: str, unit: str, scale: float) -> str:
        value = statistics.median(r[metric] for r in variant.results)
        text = f"  {variant.name:<32} {value / scale:9.3f} {unit}"
        off = baseline(variant)
        if off is not None:
            ratios = [r[metric] / o[metric] for r, o in zip(variant.results, off.results, strict=True)]
            text += f"  {100 * (statistics.median(ratios) - 1):+6.1f}% over {off.name}"
        return text

    print(f"\nmedian over {args.chunks} rounds of {args.chunk} requests:")
    for variant in variants:
        text = line(variant, "cpu_us", "ms CPU/request", 1000)
        threads: dict[str, float] = {}
        for result in variant.results:
            for thread, us in result["threads_us"].items():
                threads[thread] = threads.get(thread, 0.0) + us / len(variant.results)
        if threads:
            text += " (other threads: " + ", ".join(f"{n} {us:.0f} µs" for n, us in threads.items()) + ")"
        print(text)
    if args.callgrind:
        print("instructions (callgrind), the request's thread:")
        for variant in variants:
            print(line(variant, "instructions_main", "M instructions/request", 1e6))
        print(
            "instructions in the other threads (the span export; under valgrind it runs more often per request):"
        )
        for variant in variants:
            print(
                f"  {variant.name:<32} {statistics.median(r['instructions_other'] for r in variant.results) / 1e6:9.3f} M"
            )


if __name__ == "__main__":
    main()
