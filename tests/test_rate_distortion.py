"""bench/rate_distortion.py: the points it runs, what it collects and reports, one quick point end to end."""

from __future__ import annotations

import json
import random

import pytest

from bench import rate_distortion as rd


def fake_point(out_dir, label: str, bits: float, exact: float, acc: float, peer: bool = True) -> None:
    """What a finished point leaves: hier_ae's metrics and recon JSON, and the peer's score."""
    d = out_dir / label
    (d / "hier_ae").mkdir(parents=True)
    (d / "hier_ae" / "metrics.json").write_text(json.dumps({"train_seconds": 300.0, "parameters": 600_000}))
    level = {
        "code_bits_per_byte": bits,
        "bytes_per_code": 9.0 / bits,
        "teacher_forced_accuracy": acc,
        "reconstruct_ce_bits_per_byte": 0.7,
        "total_bits_per_byte": bits + 0.7,
        "free_decode": {"exact_match": exact, "byte_accuracy": acc - 0.1},
    }
    recon = {"date": "2026-12-03", "machine": "test cpu", "texts": {"val": {"lines": {"levels": [level]}}}}
    (d / "hier_ae_recon.json").write_text(json.dumps(recon))
    if peer:
        (d / "peer").mkdir()
        lines = {**level, "exact_match": exact / 2, "teacher_forced_accuracy": acc - 0.05}
        score = {
            "date": "2026-12-03",
            "machine": "test cpu",
            "config": {"chunk": 4},
            "nominal_bits_per_byte": rd.peer_rate(bits),
            "training": {"seconds": 299.0, "parameters": 1_000_000},
            "lines": lines,
        }
        (d / "peer" / "score.json").write_text(json.dumps(score))


def test_report_collects_every_finished_model_and_states_the_target(tmp_path):
    fake_point(tmp_path, "seg3", 3.1, 0.016, 0.88)
    fake_point(tmp_path, "seg2", 4.3, 0.10, 0.93, peer=False)  # its peer not yet run
    fake_point(tmp_path, "seg3-depth2", 6.0, 0.40, 0.97)
    args = rd.parse_args(["--report-only", "--out-dir", str(tmp_path), "--out", str(tmp_path / "rd.md")])
    args.plot = str(tmp_path / "rd.png")
    rows = rd.collect(args)
    assert sorted((r["point"], r["model"]) for r in rows) == [
        ("seg2", "hier_ae"),
        ("seg3", "hier_ae"),
        ("seg3", "peer"),
        ("seg3-depth2", "hier_ae"),
        ("seg3-depth2", "peer"),
    ]
    text = rd.render(args, rows)
    assert "| seg3 | hier_ae | (recipe) | 3.10 |" in text
    assert "| seg3 | peer | `--rate 3.00` | 3.10 |" in text  # hier_ae's line rate / 1.035
    assert "`codebook_depth=2`" in text
    # the best point at or below 4.0 bits/byte is seg3 (seg2 and depth2 spend more): 1.6% exact
    assert "Best hier_ae point at or below 4 code bits/byte: seg3, 1.6% at 3.10 bits/byte" in text
    assert "missed: 97.4 points short of 99%" in text
    assert "Not yet run: seg4, seg3-k4096, seg2-k256, seg2.5-k1024, seg2-k1024, seg2-k1024-segenc, " in text
    # a partial rerun (--points seg3) still lists every point never run, not only its own
    part = rd.parse_args(["--report-only", "--points", "seg3", "--out-dir", str(tmp_path)])
    assert "Not yet run: seg4, seg3-k4096, " in rd.render(part, rows)
    rd.plot(rows, args.plot, args.corpus)
    assert (tmp_path / "rd.png").stat().st_size > 1000


def test_a_point_is_the_recipe_plus_its_own_overrides(tmp_path):
    args = rd.parse_args([])
    argv = rd.train_argv(args, "seg2", tmp_path / "d.jsonl", tmp_path / "out")
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets[: len(rd.BASE_SET)] == rd.BASE_SET
    assert "model.levels.0.target_tokens_per_segment=2.0" in sets
    assert "steps: 3300" in sets[-1]  # the X/M-series' autoencoder budget
    assert argv[argv.index("--config") + 1] == rd.RECIPE
    assert argv[argv.index("--num_cpu_threads_per_process") + 1] == "1"
    assert "steps: 40" in rd.stages_override(quick=True)


def test_documents_are_cut_where_the_corpus_says(tmp_path):
    src = tmp_path / "train.txt"
    src.write_text("A b\nc.\n\nD e.\n\n\nF.\n")
    n = rd.write_documents(src, tmp_path / "d.jsonl")
    docs = [json.loads(line)["text"] for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert n == len(docs) == 3
    assert docs[0] == "A b\nc.\n" and docs[1] == "D e.\n"
    src.write_text("# ---- a.py ----\nx = 1\n# ---- b.py ----\ny = 2\n")
    rd.write_documents(src, tmp_path / "d.jsonl")
    docs = [json.loads(line)["text"] for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert docs == ["# ---- a.py ----\nx = 1\n", "# ---- b.py ----\ny = 2\n"]
    # running text: every N lines whatever the corpus, blank lines kept, blank documents dropped
    src.write_text("A\n\nB\nC\n")
    assert rd.write_documents(src, tmp_path / "d.jsonl", lines_per_document=2) == 2
    docs = [json.loads(line)["text"] for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert docs == ["A\n\n", "B\nC\n"]
    with pytest.raises(ValueError, match="lines_per_document"):
        rd.write_documents(src, tmp_path / "d.jsonl", lines_per_document=0)


@pytest.mark.slow
def test_one_quick_point_end_to_end(tmp_path):
    """hier_ae trains, is scored by bench.recon, its peer trains at the matched rate and is scored."""
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "ran", "to", "see", "her", "dog", "when", "late"]
    paras = [
        "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(4))
        for _ in range(300)
    ]
    root = tmp_path / "data" / "toy"
    root.mkdir(parents=True)
    (root / "train.txt").write_text("\n\n".join(paras[:260]) + "\n")
    (root / "val.txt").write_text("\n\n".join(paras[260:]) + "\n")
    out = tmp_path / "rd"
    files = ["--out", str(tmp_path / "rd.md"), "--plot", str(tmp_path / "rd.png")]
    rd.main(["--corpus", "toy", "--data-root", str(tmp_path / "data"), "--points", "seg3", "--jobs", "1"]
            + ["--quick", "--out-dir", str(out), *files])  # fmt: skip
    rows = {r["model"]: r for r in json.loads((tmp_path / "rd.json").read_text())}
    assert set(rows) == {"hier_ae", "peer"}
    # the peer was asked for hier_ae's line rate / 1.035
    log = (out / "seg3" / "log.txt").read_text()
    assert f"--rate {rd.peer_rate(rows['hier_ae']['code_bits_per_byte'])} " in log
    assert 0.0 <= rows["hier_ae"]["exact_match"] <= 1.0
    assert rows["hier_ae"]["code_bits_per_byte"] > 0
    assert "| seg3 | hier_ae |" in (tmp_path / "rd.md").read_text()


def test_an_unknown_corpus_is_refused_naming_the_ones_there(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "train.txt").write_text("a\n")
    (tmp_path / "toy" / "val.txt").write_text("b\n")
    with pytest.raises(SystemExit, match="'shakespeare'.*corpora under .*: toy"):
        rd.main(["--corpus", "shakespeare", "--data-root", str(tmp_path), "--out-dir", str(tmp_path / "rd")])
    assert not (tmp_path / "rd").exists()  # nothing trained, nothing written


def test_a_failed_step_names_its_log(tmp_path):
    log = tmp_path / "log.txt"
    with pytest.raises(RuntimeError, match="exited with 3; its output is in .*log.txt:\n.*boom"):
        rd._run([rd.sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], log)


def test_points_not_in_the_cache_keep_their_rows_from_the_last_report(tmp_path):
    """A fresh clone has no cache: running some points adds them to the report's rows, the others
    come from the JSON beside the report; the cache wins where both hold a model."""
    cache = tmp_path / "cache"
    fake_point(cache, "seg3", 3.1, 0.016, 0.88)
    out = tmp_path / "rd.md"
    earlier = [
        {"point": "seg4", "model": "hier_ae", "exact_match": 0.004},
        {"point": "seg3", "model": "hier_ae", "exact_match": 0.5},  # superseded by the cache
        {"point": "gone", "model": "hier_ae", "exact_match": 0.9},  # no longer a point
    ]
    out.with_suffix(".json").write_text(json.dumps(earlier))
    args = rd.parse_args(["--report-only", "--out-dir", str(cache), "--out", str(out)])
    rows = rd.collect(args)
    got = {(r["point"], r["model"]): r["exact_match"] for r in rows}
    assert got == {("seg3", "hier_ae"): 0.016, ("seg3", "peer"): 0.008, ("seg4", "hier_ae"): 0.004}
