"""The endurance leak verdict (bench/growth.py) on synthetic series: pure functions, no processes, no timing."""

from bench.growth import COMPARE_FROM_S, MB, WARMUP_S, Life, describe, growth, lives, same_age, slope

T0 = 1_000_000.0  # the first sample's epoch time


def run(procs: dict[str, list[tuple[int, float, float, callable]]], until: float, every: float = 10.0) -> list[dict]:
    """Samples every ``every`` s up to ``until`` s: per role, lives (pid, start s, end s, rss_mb(age))."""
    samples = []
    t = 0.0
    while t <= until:
        now = {}
        for role, roles_lives in procs.items():
            for pid, start, end, rss in roles_lives:
                if start <= t <= end:
                    now[role] = {"pid": pid, "started": T0 + start, "rss": int(rss(t - start) * MB), "fds": 30}
        samples.append({"t": T0 + t, "procs": now})
        t += every
    return samples


def warm_then(rate_mb_h: float, base: float = 40.0, warm_mb: float = 8.0, warm_s: float = 90.0):
    """RSS (MB) by age: ``warm_mb`` filled over the first ``warm_s`` seconds, then ``rate_mb_h``."""
    return lambda age: base + warm_mb * min(age, warm_s) / warm_s + rate_mb_h * max(0.0, age - warm_s) / 3600


def test_slope_is_the_least_squares_line():
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == 2.0
    assert slope([1], [5]) == 0.0
    assert slope([2, 2], [1, 5]) == 0.0


def test_the_warm_up_is_left_out_of_the_fit():
    # 8 MB in the first 90 s would read as ~48 MB/h over 10 minutes; after the warm-up it is flat.
    assert WARMUP_S == 240.0  # the figures below follow it
    g = growth(run({"files-0": [(1, 0, 1e9, warm_then(0.0))]}, until=600))
    files = g["files-0"]
    assert files["verdict"] == "flat"
    assert files["rss_mb_per_hour"] == 0.0
    assert files["fit_from_s"] == 240.0 and files["fit_to_s"] == 600.0 and files["minutes"] == 6.0
    assert files["restarts"] == 0


def test_a_steady_leak_after_the_warm_up_is_growing():
    g = growth(run({"files-0": [(1, 0, 1e9, warm_then(12.0))]}, until=600))
    assert g["files-0"]["verdict"] == "growing"
    assert 11.9 < g["files-0"]["rss_mb_per_hour"] < 12.1


def test_the_warm_up_counts_from_the_load_when_the_process_is_older():
    # The process ran idle for an hour before the load started at 0 s: its warm-up is the load's.
    g = growth(run({"gateway-0": [(1, -3600, 1e9, lambda age: 50.0 + (8.0 if age > 3700 else 0.0))]}, until=600))
    assert g["gateway-0"]["fit_from_s"] == 240.0
    assert g["gateway-0"]["verdict"] == "flat"


def test_a_process_with_too_little_left_after_its_warm_up_is_too_short_not_flat():
    g = growth(run({"discovery-0": [(1, 0, 1e9, warm_then(100.0))]}, until=500))
    assert g["discovery-0"]["verdict"] == "too short"
    assert g["discovery-0"]["processes"][0]["minutes"] < 5


def test_a_restart_gets_its_own_warm_up():
    # The first process dies at 500 s, its replacement starts then and warms up again;
    # fitting the replacement from its start would read ~40 MB/h.
    g = growth(run({"discovery-0": [(1, 0, 500, warm_then(0.0)), (2, 500, 1e9, warm_then(0.0))]}, until=1100))
    d = g["discovery-0"]
    assert d["restarts"] == 1
    first, second = d["processes"]
    assert first["verdict"] == "too short"  # 240-490 s: 4 minutes
    assert second["fit_from_s"] == 740.0 and second["verdict"] == "flat"
    assert d["verdict"] == "flat"
    assert d["pid"] == 2  # the headline figures are the longest fit's


def test_a_process_that_never_passes_its_warm_up_is_reported_so():
    g = growth(run({"files-0": [(1, 0, 200, warm_then(0.0))]}, until=200))
    f = g["files-0"]
    assert f["verdict"] == "too short"
    assert f["rss_mb_per_hour"] is None and f["fit_to_s"] is None
    assert "nothing left after the warm-up" in "\n".join(describe(g))


def test_replacements_no_larger_at_the_same_age_make_a_flat_role_with_short_lives():
    lives_ = [(pid, start, start + 400, warm_then(0.0)) for pid, start in ((1, 0), (2, 400), (3, 800), (4, 1200))]
    g = growth(run({"files-0": lives_}, until=1600))
    f = g["files-0"]
    assert {p["verdict"] for p in f["processes"]} == {"too short"}
    assert [c["verdict"] for c in f["same_age"]] == ["not larger"] * 5  # 3 vs predecessor, 2 more vs the first
    assert f["verdict"] == "flat"


def test_a_replacement_that_starts_larger_every_time_is_growing():
    # Each generation starts 3 MB above the one before (state that survives restarts).
    lives_ = [(pid, 400 * (pid - 1), 400 * pid, warm_then(0.0, base=40.0 + 3 * pid)) for pid in (1, 2, 3)]
    g = growth(run({"recording-0": lives_}, until=1200))
    r = g["recording-0"]
    assert r["verdict"] == "growing"
    by = {(c["pid"], c["against"]): c for c in r["same_age"]}
    assert by[(2, "predecessor")]["median_excess_mb"] == 3.0
    assert by[(3, "first")]["median_excess_mb"] == 6.0
    assert by[(3, "first")]["verdict"] == "larger"


def test_small_steps_each_under_the_tolerance_add_up_against_the_first_process():
    lives_ = [(pid, 400 * (pid - 1), 400 * pid, warm_then(0.0, base=40.0 + 0.6 * pid)) for pid in (1, 2, 3, 4)]
    g = growth(run({"files-0": lives_}, until=1600))
    verdicts = {(c["pid"], c["against"]): c["verdict"] for c in g["files-0"]["same_age"]}
    assert verdicts[(4, "predecessor")] == "not larger"
    assert verdicts[(4, "first")] == "larger"
    assert g["files-0"]["verdict"] == "growing"


def test_same_age_compares_only_ages_both_lived_past_the_first_minute():
    assert COMPARE_FROM_S == 60.0
    early = Life("files-0", 1, 0.0, [(float(t), int(40 * MB), 30) for t in range(0, 140, 10)])
    late = Life("files-0", 2, 500.0, [(500.0 + t, int(45 * MB), 30) for t in range(0, 400, 10)])
    c = same_age(early, late)
    assert c["ages_s"] == [60, 130] and c["compared"] == 8 and c["verdict"] == "larger"
    # A replacement that died in its first minute is not compared.
    short = Life("files-0", 3, 900.0, [(900.0 + t, int(90 * MB), 30) for t in range(0, 60, 10)])
    assert same_age(early, short) is None


def test_rss_at_age_interpolates_between_samples():
    life = Life("x", 1, 100.0, [(110.0, 10 * MB, 1), (130.0, 20 * MB, 1)])
    assert life.rss_at_age(20.0) == 15.0
    assert life.rss_at_age(10.0) == 10.0 and life.rss_at_age(30.0) == 20.0
    assert life.rss_at_age(5.0) is None and life.rss_at_age(31.0) is None


def test_ffmpeg_captures_are_not_fitted_and_roles_keep_their_start_order():
    samples = [
        {
            "t": T0 + t,
            "procs": {
                "ffmpeg-0": {"pid": 9, "started": T0, "rss": MB, "fds": 3},
                "gateway-0": {"pid": 5 if t < 50 else 6, "started": T0 + (0 if t < 50 else 50), "rss": MB, "fds": 3},
            },
        }
        for t in range(0, 100, 10)
    ]
    roles = lives(samples)
    assert list(roles) == ["gateway-0"]
    assert [lf.pid for lf in roles["gateway-0"]] == [5, 6]


def test_describe_shows_each_fitted_window():
    g = growth(run({"files-0": [(7, 0, 1e9, warm_then(0.0))]}, until=600))
    text = "\n".join(describe(g))
    assert "files-0" in text and "pid 7 fitted 240-600 s (6.0 min)" in text and "flat" in text


def test_the_report_shows_every_process_window_and_the_same_age_comparisons():
    from bench.report import growth_tables

    lives_ = [(1, 0, 400, warm_then(0.0)), (2, 400, 500, warm_then(0.0)), (3, 500, 1e9, warm_then(0.0))]
    html = growth_tables(growth(run({"files-0": lives_}, until=900)), {"warmup_s": 240, "min_fit_s": 300})
    assert "none left" in html  # pid 2 died inside its warm-up
    assert "240–390" in html and "740–900" in html  # the fitted windows of pids 1 and 3
    # pid 3 against its predecessor over the ages pid 2 lived (60-90 s), against the first over 60-390 s
    assert "predecessor (2)</td><td>60–90" in html and "first (1)</td><td>60–390" in html
