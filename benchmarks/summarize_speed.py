"""Speed figures for `summarize_transcripts` (issue 2, section 7), measured as ratios in one run.

1. LLM mode against the local fake OpenAI server with a fixed latency and a concurrency cap:
   the flow's wall time against the ideal schedule for its chunk count (map waves + reduce
   waves, each wave costing one latency). Overhead = measured / ideal - 1.
2. Offline mode: transcripts per minute on the long sample, and peak RSS, in a fresh process.
3. `gristmill --help`: wall time against the 1 s limit.

Run: .venv/bin/python benchmarks/summarize_speed.py [--latency 0.2 1.0] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LONG_SAMPLE = REPO / "data" / "transcripts" / "quarterly-roadmap.json"


def llm_overhead(latency: float, concurrency: int, chunk_tokens: int) -> dict[str, float]:
    from pydantic import SecretStr

    from pipelines.run_context import run_context
    from pipelines.summarize import summarize_flow_for
    from tasks.chunking import chunk_utterances
    from tasks.reporting import state_report
    from tasks.settings import Settings
    from tasks.summaries import MeetingNotes
    from tasks.summaries.reduce import plan_reduce_groups
    from tasks.transcripts import parse_transcript
    from tests.support.openai_server import FakeOpenAI
    from tests.support.responders import meeting_notes_responder

    answered: list[float] = []  # when each call's latency ended (the responder runs after it)

    def responder(body: dict) -> str:
        answered.append(time.perf_counter())
        return meeting_notes_responder(body)

    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeOpenAI(latency=latency, responder=responder) as server,
    ):
        data = Path(tmp)
        (data / "transcripts").mkdir()
        shutil.copy(LONG_SAMPLE, data / "transcripts")
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=data,
            openai_base_url=server.base_url,
            openai_api_key=SecretStr("sk-bench"),
            llm_concurrency=concurrency,
            chunk_tokens=chunk_tokens,
        )
        transcript = parse_transcript(LONG_SAMPLE)
        chunks = chunk_utterances(
            transcript.utterances, settings.chunk_tokens, settings.chunk_overlap_tokens
        )
        # The ideal schedule: map waves, then one wave per reduce pass (groups run in parallel).
        notes = MeetingNotes.model_validate_json(meeting_notes_responder({"messages": []}))
        parts = [notes] * len(chunks)
        waves = math.ceil(len(chunks) / concurrency)
        reduce_waves = 0
        while True:
            groups = plan_reduce_groups(parts, settings.reduce_tokens)
            reduce_waves += math.ceil(len(groups) / concurrency) if len(groups) > 1 else 1
            if len(groups) == 1:
                break
            parts = [notes] * len(groups)
        ideal = (waves + reduce_waves) * latency
        flow = summarize_flow_for(settings)
        # Warm-up on a short transcript: pays the one-off imports (GX ~5 s) outside the figure.
        warm = data / "warm-up"
        warm.mkdir()
        shutil.copy(REPO / "data" / "transcripts" / "weekly-standup.txt", warm)
        with run_context(settings=settings):
            flow(paths=[str(warm)])
        answered.clear()
        started = time.perf_counter()
        with run_context(settings=settings):
            # force: notes stored by an earlier run must not stand in for calls
            state = flow(force=True, return_state=True)
        wall = time.perf_counter() - started
        report = state_report(state)
        assert report.transcripts[0].status == "ok", report.transcripts[0].error
        # The LLM phase: from the first call's start to the last call's answer.
        llm_phase = answered[-1] - (answered[0] - latency)
        return {
            "latency_s": latency,
            "chunks": len(chunks),
            "map_waves": waves,
            "reduce_waves": reduce_waves,
            "llm_calls": report.llm_calls,
            "ideal_s": round(ideal, 3),
            "llm_phase_s": round(llm_phase, 3),
            "overhead_llm_phase": round(llm_phase / ideal - 1, 3),
            "flow_body_s": report.duration_s,
            "overhead_flow_body": round(report.duration_s / ideal - 1, 3),
            "wall_with_flow_run_s": round(wall, 3),
            "overhead_wall": round(wall / ideal - 1, 3),
            "peak_concurrency_seen": server.max_concurrency,
        }


def offline_throughput(repeats: int) -> dict[str, float]:
    code = f"""
import json, resource, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {str(REPO)!r})
from tasks.chunking import chunk_utterances
from tasks.summaries.engines.extractive.engine import ExtractiveSummarizer
from tasks.summaries.reduce import plan_reduce_groups
from tasks.transcripts import parse_transcript
s = ExtractiveSummarizer()
started = time.perf_counter()
for _ in range({repeats}):
    t = parse_transcript(Path({str(LONG_SAMPLE)!r}))
    chunks = chunk_utterances(t.utterances, 2000, 150)
    parts = [s.summarize_chunk(c, title=t.name, chunk_count=len(chunks)).notes for c in chunks]
    while len(groups := plan_reduce_groups(parts, 6000)) > 1:
        parts = [s.combine([parts[i] for i in g], title=t.name, final=False).notes for g in groups]
    s.combine(parts, title=t.name, final=True)
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds_per_transcript": elapsed / {repeats},
                  "words": sum(len(u.text.split()) for u in t.utterances),
                  "chunks": len(chunks),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["transcripts_per_minute"] = round(60 / data["seconds_per_transcript"], 1)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


def help_time(runs: int = 5) -> dict[str, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "--help"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        times.append(time.perf_counter() - started)
    best, median = min(times), sorted(times)[len(times) // 2]
    return {"best_s": round(best, 3), "median_s": round(median, 3), "ratio_to_1s": round(median, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, nargs="+", default=[0.2, 1.0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--chunk-tokens", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", tempfile.mkdtemp(prefix="bench-results-"))
    results = {
        "help": help_time(),
        "offline": offline_throughput(args.repeats),
        "llm": [llm_overhead(lat, args.concurrency, args.chunk_tokens) for lat in args.latency],
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
