"""Row 14 -- LLM outage: 20% 429/503, then a daily-quota 429; the job is killed and restarted.

The job (tests/reliability/llm_job.py) is a separate process running the production
LLMGenerator + google-genai client + generate_all against the local Gemini-protocol server.
Pass: transient errors are retried after jittered backoff (every chosen sleep is recorded);
the daily quota stops the job (never retried); a SIGKILLed run and the restarts together ask
the server for every (prompt, sample) exactly once; the final weights equal an uninterrupted run.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO, cli_env
from offline.generators.job import generate_all
from offline.llm.cache import AnswerCache
from tests.fakes.llm_server import FakeLLMServer
from tests.helpers import FEATS, make_catalog

from . import llm_job

TOTAL = llm_job.N_ADS * llm_job.N_SAMPLES * 3  # 10 non-bias features in batches of 4 -> 3 batches


def _job(fake: FakeLLMServer, cache, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.llm_job", fake.base_url, str(cache), str(out)],
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _sleeps(out) -> list[float]:
    p = out.with_suffix(".sleeps")
    return [float(line.split()[0]) for line in p.read_text().splitlines()] if p.exists() else []


@pytest.mark.slow
def test_row14_outage_backoff_quota_kill_resume(tmp_path, record):
    cache, out = tmp_path / "cache", tmp_path / "job"
    ok_log: list[tuple[str, object]] = []  # every OK answer the server gave, over all runs
    with FakeLLMServer() as fake:
        # reference: an uninterrupted run with a fresh cache
        ads, nbs = make_catalog(llm_job.N_ADS)
        ref = generate_all(llm_job.make_generator(fake.base_url, str(tmp_path / "ref"), lambda s: None),
                           ads, nbs, FEATS, progress=False)
        assert fake.ok_count == TOTAL
        fake.reset_counters()

        # run 1: 20% 429/503 for the first 30 requests, then the daily quota is spent
        rng = random.Random(14)
        script = [rng.choice(["429", "503"]) if rng.random() < 0.2 else "ok" for _ in range(30)]
        fake.script(script)
        fake.always("quota")
        p = _job(fake, cache, out)
        _, err = p.communicate(timeout=120)
        kinds = [e["behaviour"] for e in fake.log]
        ok_log += [(e["prompt_hash"], e["seed"]) for e in fake.log if e["behaviour"] == "ok"]
        transient = sum(k in ("429", "503") for k in kinds)
        sleeps1 = _sleeps(out)
        first_quota = kinds.index("quota")
        after_quota = len(kinds) - first_quota - 1
        cached1 = len(AnswerCache(cache).keys_on_disk())
        assert p.returncode == 3 and "daily quota exhausted" in err, err[-1500:]
        assert kinds.count("quota") <= llm_job.WORKERS  # one per in-flight worker, never retried
        assert after_quota <= llm_job.WORKERS - 1
        assert transient >= 3 and len(sleeps1) == transient  # one backoff per transient error
        assert cached1 == kinds.count("ok")  # everything answered is on disk
        ceilings = [min(llm_job.BACKOFF_CAP, llm_job.BACKOFF_BASE * 2 ** a) for a in range(llm_job.MAX_RETRIES)]
        assert all(0.0 <= s <= max(ceilings) for s in sleeps1), sleeps1
        # 429 carries Retry-After: 1 -> the sleep is max(jitter, min(1 s, cap)) = the cap;
        # 503 has no Retry-After -> pure full jitter U(0, min(cap, base * 2**attempt)), all distinct
        at_cap = [s for s in sleeps1 if s == llm_job.BACKOFF_CAP]
        jittered = [s for s in sleeps1 if s != llm_job.BACKOFF_CAP]
        assert len(at_cap) == kinds.count("429") and len(jittered) == kinds.count("503")
        assert len(set(jittered)) == len(jittered) and all(s < llm_job.BACKOFF_CAP for s in jittered)

        # run 2: quota back; the server stalls after 10 more answers and the job is SIGKILLed
        fake.clear()
        fake.reset_counters()
        fake.stall_after(10)
        p = _job(fake, cache, out)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                fake.stalled >= 1 and len(AnswerCache(cache).keys_on_disk()) >= cached1 + 10):
            assert p.poll() is None, p.stderr.read()[-1500:]
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        ok_log += [(e["prompt_hash"], e["seed"]) for e in fake.log if e["behaviour"] == "ok"]
        cached2 = len(AnswerCache(cache).keys_on_disk())
        assert p.returncode == -signal.SIGKILL and cached2 == cached1 + 10

        # run 3: restart, finishes
        fake.release()
        fake.clear()
        fake.reset_counters()
        p = _job(fake, cache, out)
        stdout, err = p.communicate(timeout=120)
        run3 = [(e["prompt_hash"], e["seed"]) for e in fake.log]
        ok_log += [(e["prompt_hash"], e["seed"]) for e in fake.log if e["behaviour"] == "ok"]
    final = np.load(out.with_suffix(".npy"))
    repeated = len(ok_log) - len(set(ok_log))
    record("row14", total_answers_needed=TOTAL, run1_requests=len(kinds), run1_transient_errors=transient,
           run1_429=kinds.count("429"), run1_503=kinds.count("503"),
           run1_sleeps_s=[round(s, 4) for s in sleeps1], run1_quota_requests=kinds.count("quota"),
           run1_requests_after_quota=after_quota, run1_cached=cached1, run2_cached_at_kill=cached2,
           run3_requests=len(run3), ok_answers_total=len(ok_log), repeated_calls=repeated,
           final_equals_uninterrupted=bool(np.array_equal(final, np.stack([g.theta for g in ref]))))
    assert p.returncode == 0 and stdout.startswith("finished 0"), err[-1500:]
    assert len(run3) == TOTAL - cached2  # only what was never answered is asked
    assert repeated == 0 and len(ok_log) == TOTAL
    assert np.array_equal(final, np.stack([g.theta for g in ref]))
