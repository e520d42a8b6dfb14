"""bench/frontier.py on cached results written here (no training): which points it collects, the best
size per family, the report and the plot."""

from __future__ import annotations

from bench import frontier, run
from bench.plan import PRIMARY, result_path, write_json


def fake_point(args, size: str, family: str, params: int, bpb: float) -> None:
    run_args = run.parse_args(frontier.point_argv(args, size))
    write_json(
        result_path(run_args, "train", family, PRIMARY),
        {"parameters": params, "shape": f"{family} shape", "train_bytes": 1e6, "train_seconds": 600.0},
    )
    write_json(
        result_path(run_args, "flops", family, PRIMARY),
        {
            "run_train_flops": params * 6e6,
            "train_flops_per_byte": 6.0 * params,
            "inference_flops_per_byte": 2.0 * params,
        },
    )
    write_json(
        result_path(run_args, "score", family, PRIMARY),
        {"val": {frontier.VAL: {"predict": {"bits_per_byte": bpb}}}},
    )


def output_files(tmp_path) -> list[str]:
    """The report, plot and points arguments, all under tmp_path."""
    return [
        "--out",
        str(tmp_path / "f.md"),
        "--plot",
        str(tmp_path / "f.png"),
        "--points",
        str(tmp_path / "f.json"),
    ]


def test_frontier_collects_cached_points_and_names_each_familys_best_size(tmp_path):
    files = output_files(tmp_path)
    args = frontier.parse_args(["--cache-dir", str(tmp_path), *files])
    fake_point(args, "1.4m", "hier_ae", 1_400_000, 2.6)
    fake_point(args, "3.1m", "hier_ae", 3_100_000, 2.4)
    fake_point(args, "1.4m", "llama", 1_400_000, 2.2)
    fake_point(args, "3.1m", "llama", 3_100_000, 2.3)
    # a point with no score yet is not collected
    run_args = run.parse_args(frontier.point_argv(args, "9m"))
    write_json(result_path(run_args, "train", "blt", PRIMARY), {"parameters": 1})

    rows = frontier.collect(args)
    assert {(r["size"], r["family"]) for r in rows} == {
        ("1.4m", "hier_ae"),
        ("3.1m", "hier_ae"),
        ("1.4m", "llama"),
        ("3.1m", "llama"),
    }
    best = frontier.best_sizes(rows)
    assert best["hier_ae"]["size"] == "3.1m" and best["llama"]["size"] == "1.4m"

    text = frontier.render(args, rows, "test machine")
    assert "hier_ae / llama at their best sizes: 1.091x" in text  # 2.4 / 2.2
    assert "Not yet run:" in text and "blt at 9m" in text and "hier_ae at 9m" in text
    assert "![bits/byte against training FLOPs](f.png)" in text
    frontier.plot(rows, args.plot, args.budget_minutes)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_point_is_a_bench_run_of_the_main_data_only(tmp_path):
    args = frontier.parse_args(["--cache-dir", str(tmp_path), "--budget-minutes", "12"])
    run_args = run.parse_args(frontier.point_argv(args, "9m"))
    assert run_args.config.endswith("bench/variants/frontier/hier_ae-9m.yaml")
    assert run_args.budget_minutes == 12 and run_args.cache_dir == str(tmp_path / "9m")
    assert run_args.skip_second and run_args.skip_scaling and run_args.skip_recon and run_args.skip_generate
    smallest = run.parse_args(frontier.point_argv(args, "0.9m"))  # BLT cannot be made that small
    assert smallest.peer_targets == {"blt": frontier.PEER_PARAMS["0.9m"]["blt"]}


def test_points_missing_from_the_cache_come_from_the_committed_json(tmp_path):
    """The cache is not committed: a later session's report keeps the points an earlier one wrote."""
    files = output_files(tmp_path)
    args = frontier.parse_args(["--cache-dir", str(tmp_path / "a"), *files])
    fake_point(args, "1.4m", "llama", 1_400_000, 2.2)
    frontier.main(["--report-only", "--cache-dir", str(tmp_path / "a"), *files])
    later = frontier.parse_args(["--cache-dir", str(tmp_path / "b"), *files])  # an empty cache
    fake_point(later, "3.1m", "llama", 3_100_000, 2.3)
    assert {(r["size"], r["bits_per_byte"]) for r in frontier.collect(later)} == {
        ("1.4m", 2.2),
        ("3.1m", 2.3),
    }
    other = frontier.parse_args(["--cache-dir", str(tmp_path / "b"), "--budget-minutes", "20", *files])
    assert frontier.collect(other) == []  # points of another budget are not mixed in


def test_each_point_names_when_and_on_which_cpu_it_ran(tmp_path):
    """Points kept from an earlier session may come from another CPU: a wall-clock budget buys
    different work there, so each row names its CPU and the report says when they differ."""
    args = frontier.parse_args(["--cache-dir", str(tmp_path), *output_files(tmp_path)])
    fake_point(args, "1.4m", "llama", 1_400_000, 2.2)
    (row,) = frontier.collect(args)
    assert row["cpu"] == run.cpu_name() and len(row["date"]) == len("2026-12-02")
    one = frontier.render(args, [row], "test machine")
    assert f"| 2.2000 | {row['date']}, {row['cpu']} |" in one and "different CPUs" not in one
    other = {**row, "size": "3.1m", "date": "2026-11-29", "cpu": "Some Other CPU"}
    two = frontier.render(args, [row, other], "test machine")
    assert "The points ran on 2 different CPUs" in two and "Some Other CPU" in two


def test_a_one_level_point_trains_hier_ae_alone_and_is_its_own_line(tmp_path):
    """The one-level design (hier_ae-1level-*.yaml) is a second hier_ae line: its points run hier_ae only
    (the peers of about its size are the two-level points'), and the ratios take hier_ae's best line."""
    files = output_files(tmp_path)
    args = frontier.parse_args(["--cache-dir", str(tmp_path), *files])
    run_args = run.parse_args(frontier.point_argv(args, "1level-1.1m"))
    assert run_args.only == ["hier_ae"] and run_args.config.endswith("hier_ae-1level-1.1m.yaml")
    assert run.parse_args(frontier.point_argv(args, "1.4m")).only is None  # all three families
    fake_point(args, "1.4m", "hier_ae", 1_400_000, 2.5)
    fake_point(args, "1.4m", "llama", 1_400_000, 2.2)
    fake_point(args, "1level-1.1m", "hier_ae", 1_100_000, 2.42)

    rows = frontier.collect(args)
    assert {(r["size"], r["family"]) for r in rows} == {
        ("1.4m", "hier_ae"),
        ("1.4m", "llama"),
        ("1level-1.1m", "hier_ae-1level"),
    }
    text = frontier.render(args, rows, "test machine")
    assert "- hier_ae-1level: 1level-1.1m (1,100,000 parameters), 2.4200 bits/byte" in text
    assert "hier_ae-1level / llama at their best sizes: 1.100x" in text  # 2.42 / 2.2, not 2.5 / 2.2
    assert "hier_ae-1level at 1level-0.9m" in text and "llama at 1level" not in text  # not yet run
    frontier.plot(rows, args.plot, args.budget_minutes)
    assert (tmp_path / "f.png").exists()
