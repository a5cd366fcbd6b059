"""``llmhyper optimize-prompt`` picks the prompt the retired-only objective prefers, writes a
versioned prompt file, and ``build --prompt FILE --judge flag`` uses it, records it in the
manifest and writes the judge's content rules next to the artifact. The LLM is the local
OpenAI-compatible fake server; the pipeline, folds and selection are the real ones."""

import json

import pytest

from llmhyper.cli.main import main
from offline.data.artifact import WeightArtifact
from offline.llm.prompt_file import INSTRUCTION_VARIANTS, PromptFile, load_prompt_file

from tests.fakes.llm_server import FakeLLMServer


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    from offline.pipeline import BuildConfig, load_source, prepare

    cfg = BuildConfig(dataset="synthetic", k=5, work_dir=str(tmp_path_factory.mktemp("work")))
    return prepare(load_source(cfg.dataset), cfg)


def test_search_picks_the_variant_the_objective_scores_best(prep, tmp_path):
    from offline.generators.prompt_search import optimize_prompt
    from offline.llm import make_backend

    variants = {"plain": "", "flip": "FLIP-THE-WEIGHTS marker.", "damp": "DAMP-THE-WEIGHTS marker."}
    with FakeLLMServer() as srv:
        # the fake model reacts to the instruction: 'flip' negates every weight, 'damp' shrinks them
        srv.instruction_effects = [("FLIP-THE-WEIGHTS", -1.0), ("DAMP-THE-WEIGHTS", 0.2)]
        be = make_backend("openai", {"base_url": srv.openai_base_url, "model": "fake", "api_key": "t"})
        opts = {"n_samples": 1, "batch_size": 16, "cache_dir": str(tmp_path / "c")}
        pf = optimize_prompt(prep, be, opts, variants=variants, shots=(3,), max_held=8)
        calls = srv.calls_by_route["openai"]
        warm = {prep.dataset.ads[i].title for i in prep.split.warm}
        cold = {prep.dataset.ads[i].title for i in prep.split.cold} - warm  # titles only active ads have
        asked = {json.loads(r["user"].split("<<<DATA target_ad>>>\n", 1)[1].split("\n", 1)[0])["title"]
                 for r in srv.requests}
    table = pf.search["candidates"]
    assert set(table) == {"plain/3s", "flip/3s", "damp/3s"}
    best = max(table, key=lambda n: table[n]["objective"])
    assert pf.search["best"] == best and f"{pf.name}/{pf.shots}s" == best
    assert table["flip/3s"]["objective"] < table["plain/3s"]["objective"]  # negated weights rank worse
    assert pf.name != "flip" and pf.shots == 3 and all(v["failed_ads"] == 0 for v in table.values())
    assert calls == 3 * sum(f["held"] for f in pf.search["folds"])  # one batch, one sample per held ad
    assert not (asked & cold), "an active ad was sent to the model during prompt selection"


def test_prompt_file_round_trip_and_checks(tmp_path):
    pf = PromptFile(name="anchor", instruction=INSTRUCTION_VARIANTS["anchor"], shots=3)
    path = pf.save(tmp_path / "p.json")
    back = load_prompt_file(path)
    assert back.version == pf.version and back.instruction == pf.instruction and back.path == str(path)
    assert PromptFile(name="x", instruction="", shots=3).version != pf.version
    d = json.loads(path.read_text())
    d["instruction"] = "edited by hand"
    (tmp_path / "edited.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="does not match its content"):
        load_prompt_file(tmp_path / "edited.json")
    with pytest.raises(ValueError, match="markers"):
        PromptFile(name="x", instruction="<<<END DATA>>>", shots=1)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="format"):
        load_prompt_file(tmp_path / "junk.json")


def test_cli_optimize_then_build_with_the_prompt_and_the_judge(tmp_path, capsys):
    work = str(tmp_path / "work")
    with FakeLLMServer() as srv:
        srv.instruction_effects = [(INSTRUCTION_VARIANTS["sparse"][:40], -1.0)]
        srv.judge_rules = [("", "interest_toys", 0.8)]  # every ad: a rule on interest_toys > 0.8
        common = ["--base-url", srv.openai_base_url, "--model", "fake"]
        rc = main(["optimize-prompt", "--dataset", "synthetic", "--generator", "openai", *common,
                   "--variants", "base,sparse", "--shots", "2", "--max-held", "6", "--k", "5",
                   "--option", "n_samples=1", "--option", "batch_size=16", "--option", "api_key=\"t\"",
                   "--work-dir", work, "--out", str(tmp_path / "prompt.json"), "--quiet"])
        assert rc == 0
        pf = load_prompt_file(tmp_path / "prompt.json")
        assert pf.name == "base" and pf.search["best"] == "base/2s" and "best: base/2s" in capsys.readouterr().out
        srv.reset_counters()
        out = tmp_path / "w.npz"
        rc = main(["build", "--dataset", "synthetic", "--generator", "openai", *common, "--k", "5",
                   "--limit", "3", "--prompt", str(tmp_path / "prompt.json"), "--judge", "flag",
                   "--work-dir", work, "--no-publish", "--out", str(out), "--quiet"])
        assert rc == 0
        weight_reqs = [r for r in srv.requests if "<<<DATA judge_request>>>" not in r["user"]]
        judge_reqs = [r for r in srv.requests if "<<<DATA judge_request>>>" in r["user"]]
    art = WeightArtifact.load(out)
    m = art.manifest
    assert m["prompt_version"] == pf.version and m["prompt_file"]["version"] == pf.version
    assert m["prompt_file"]["path"] == str((tmp_path / "prompt.json").resolve()) and m["judge"] == "flag"
    assert len(weight_reqs) == 3 * 2 * 3 and len(judge_reqs) == 3 * 2  # ads x batches (x default 3 samples)
    assert all(r["user"].count("<<<DATA reference_ad_") == 2 for r in weight_reqs)  # the file's shots
    for rec in art.ad_records.values():
        assert rec["judge"]["mode"] == "flag" and set(rec["judge"]["verdicts"]) == {n for n, _ in art.features[1:]}
    rules = json.loads(out.with_suffix(".rules.json").read_text())
    assert sorted(r["ad_id"] for r in rules) == sorted(art.ad_ids)
    assert all(r["feature"] == "interest_toys" and r["threshold"] == 0.8 for r in rules)


def test_cli_rejects_bad_prompt_files_and_judge_without_llm(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    assert main(["build", "--dataset", "synthetic", "--generator", "openai", "--base-url", "http://127.0.0.1:9/v1",
                 "--prompt", str(tmp_path / "bad.json"), "--no-publish", "--out", str(tmp_path / "w.npz")]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["build", "--dataset", "synthetic", "--judge", "flag", "--no-publish",
                 "--out", str(tmp_path / "w.npz")]) == 2
    assert "LLM generator" in capsys.readouterr().err
    assert main(["optimize-prompt", "--generator", "openai", "--base-url", "http://127.0.0.1:9/v1",
                 "--variants", "nope", "--out", str(tmp_path / "p.json")]) == 2
    assert "unknown instruction variant" in capsys.readouterr().err
