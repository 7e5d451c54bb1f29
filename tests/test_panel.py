"""volnb.panel: loading and validating the Binance hourly panel, the paper's cleaning rules and the known breaks,
the cleaning log and the per-token data-quality table; on synthetic panels small enough to check by hand, on the
real file, and through the `multitoken_prepare` stage."""
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from pydantic import ValidationError

from volnb.core import DataValidationError, compose_config
from volnb.panel import (LOG_COLUMNS, OHLCV, PANEL_COLUMNS, QUALITY_COLUMNS, clean_panel, data_quality,
                         direction_excluded, load_panel, profile_tokens, select_tokens, token_categories)

H = pd.Timedelta("1h")
T0 = pd.Timestamp("2021-04-04 21:00")          # the download window's first hour (cleaning.listed_before)
CFG = compose_config("experiment=multitoken")


def rules(**kw):
    "The repository's cleaning rules with some values changed."
    d = OmegaConf.to_container(CFG.experiment.cleaning, resolve=True)
    d.update(kw)
    return d


def bars(token, start, closes, skip=(), volume=10.0):
    "Hourly bars from `start`: open = the previous close, high/low around open and close; hours in `skip` left out."
    rows, prev = [], closes[0]
    for i, c in enumerate(closes):
        if i not in skip:
            rows.append((token, pd.Timestamp(start) + i * H, prev, max(prev, c), min(prev, c), c, volume))
        prev = c
    return pd.DataFrame(rows, columns=["token", "timestamp", *OHLCV])


def to_csv(path, df):
    "A raw file like the real one: date, OHLCV, ticker."
    out = df.assign(date=df.timestamp.dt.strftime("%Y-%m-%d %H:%M:%S"), ticker=df.token + "USDT")
    out[["date", *OHLCV, "ticker"]].to_csv(path, index=False)
    return path


def hours(panel, token):
    return panel[panel.token == token].set_index("timestamp")


# ------------------------------------------------------------------------------------------ loading
@pytest.fixture
def three(tmp_path):
    "Three tokens: A (gaps of 1, 2 and 3 hours), B (an 80 % spike that reverts, a 60 % step that stays), C (a listing)."
    A = bars("A", T0, [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23], skip={2, 5, 6, 9, 10, 11})
    B = bars("B", T0, [100, 100, 180, 100, 100, 160, 160, 160])
    C = bars("C", "2021-05-01 00:00", [5, 6, 7])
    return to_csv(tmp_path / "three.csv", pd.concat([A, B, C], ignore_index=True))


def test_load_panel_contract_and_filters(three):
    p = load_panel(three)
    assert list(p.columns) == ["token", "timestamp", *OHLCV] and len(p) == 8 + 8 + 3
    assert str(p.timestamp.dtype) == "datetime64[ns]" and all(str(p[c].dtype) == "float64" for c in OHLCV)
    assert p.token.unique().tolist() == ["A", "B", "C"]
    q = load_panel(three, tokens=["CUSDT", "B"], start="2021-04-04 22:00", end="2021-05-01 00:00")
    assert q.token.tolist() == ["B"] * 7 + ["C"] and q.timestamp.min() == T0 + H
    # small chunks: the same rows, and a bad value in a later chunk is still named by its line
    pd.testing.assert_frame_equal(load_panel(three, chunksize=2), p)


def test_load_panel_reads_in_chunks_and_names_lines(tmp_path):
    df = bars("A", T0, list(np.linspace(10, 20, 30)))
    f = to_csv(tmp_path / "a.csv", df)
    text = f.read_text().splitlines()
    text[25] = text[25].replace("USDT", "BTC")                 # line 26 of the file
    f.write_text("\n".join(text) + "\n")
    with pytest.raises(DataValidationError) as e: load_panel(f, chunksize=7)
    assert (e.value.column, e.value.row) == ("ticker", 26) and "not a USDT pair" in str(e.value)


GOOD = """date,open,high,low,close,volume,ticker
2022-01-01 00:00:00,10,11,9,10.5,100,AAAUSDT
2022-01-01 01:00:00,10.5,12,10,11,120,AAAUSDT
2022-01-01 00:00:00,1,1.1,0.9,1.05,1000,BBBUSDT
"""


@pytest.mark.parametrize("old,new,problem,column,row", [
    ("volume,ticker", "volume,symbol", "missing column(s) ['ticker']", "ticker", None),
    ("2022-01-01 01:00:00", "2022-01-01 25:00:00", "unparsable date", "date", 3),
    ("10.5,12,10,11,", "10.5,12,10,1l,", "not a number", "close", 3),
    ("10.5,12,10,11,120", "10.5,12,10,11,", "missing (NaN) value", "volume", 3),
    ("1,1.1,0.9,1.05", "1,1.1,0.9,-1.05", "close must be > 0", "close", 4),
    ("11,120", "11,-1", "volume must be >= 0", "volume", 3),
    ("10,11,9,10.5", "10,10.4,9,10.5", "impossible OHLC bar", "high", 2),
    ("10,11,9,10.5", "10,11,10.2,10.5", "impossible OHLC bar", "low", 2),
    ("2022-01-01 01:00:00", "2022-01-01 00:00:00", "duplicate (ticker, hour)", "date", 3),
    ("2022-01-01 01:00:00", "2022-01-01 01:00:01", "not on the hour", "date", 3),
    ("BBBUSDT", "BBBBUSD", "not a USDT pair", "ticker", 4),
])
def test_bad_input_names_file_column_and_row(tmp_path, old, new, problem, column, row):
    f = tmp_path / "bad.csv"
    assert old in GOOD
    f.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(DataValidationError) as e: load_panel(f)
    assert problem in str(e.value) and "bad.csv" in str(e.value), str(e.value)
    assert (e.value.column, e.value.row) == (column, row), str(e.value)


def test_unknown_token_and_missing_file(tmp_path):
    f = tmp_path / "ok.csv"
    f.write_text(GOOD)
    with pytest.raises(DataValidationError, match=r"no rows of token\(s\) \['ZZZ'\]"): load_panel(f, tokens=["AAA", "ZZZ"])
    with pytest.raises(DataValidationError, match="between"): load_panel(f, tokens=["BBB"], start="2022-01-01 01:00")
    with pytest.raises(DataValidationError, match="file not found"): load_panel(tmp_path / "nope.csv.gz")
    with pytest.raises(ValueError, match="is after end"): load_panel(f, start="2022-02-01", end="2022-01-01")


# ------------------------------------------------------------------------------------------ cleaning
def test_gaps_filled_interpolated_or_absent(three):
    panel, log = clean_panel(load_panel(three), rules(ffill_max_hours=1, interpolate_max_hours=2))
    a = hours(panel, "A")
    # real hours 21, 22, 0, 1, 4, 5, 9, 10: the 1-hour gap (23:00) is forward-filled, the 2-hour gap (2:00, 3:00)
    # interpolated, the 3-hour gap (6:00-8:00) left absent, and the reopening hour 9:00 dropped
    assert a.index.hour.tolist() == [21, 22, 23, 0, 1, 2, 3, 4, 5, 10]
    assert a.filled.tolist() == [False, False, True, False, False, True, True, False, False, False]
    assert a.loc[T0 + 2 * H, ["open", "high", "low", "close", "volume"]].tolist() == [11, 11, 11, 11, 0]
    assert a.loc[[T0 + 5 * H, T0 + 6 * H], ["open", "high", "low", "close", "volume"]].values.tolist() == \
        [[14, 15, 14, 15, 0], [15, 16, 15, 16, 0]]                        # 14 -> 17 in three equal steps
    assert log[log.token == "A"][["action", "start", "end", "rows"]].values.tolist() == [
        ["ffill", T0 + 2 * H, T0 + 2 * H, 1], ["interpolate", T0 + 5 * H, T0 + 6 * H, 2],
        ["outage", T0 + 9 * H, T0 + 11 * H, 3], ["burn_in", T0 + 12 * H, T0 + 12 * H, 1]]
    # the listing C loses its opening hour; A and B start with the download window, not a listing
    assert hours(panel, "C").close.tolist() == [6, 7] and hours(panel, "B").index.min() == T0
    assert list(log.columns) == list(LOG_COLUMNS)


def test_repository_limits_fill_every_maintenance_window(three):
    "ffill_max_hours 4: gaps of 1-3 hours are forward-filled; interpolation (<= 1 hour) never applies after it."
    panel, log = clean_panel(load_panel(three), rules())
    a = hours(panel, "A")
    assert len(a) == 14 and a.filled.sum() == 6 and (a.index.to_series().diff().dropna() == H).all()
    assert set(log[log.token == "A"].action) == {"ffill"}
    assert (a[a.filled].volume == 0).all() and (a[a.filled].high == a[a.filled].low).all()


def test_forward_fill_uses_only_the_past(three):
    "A filled hour equals the last close before it: changing the hours after the gap changes nothing in it."
    raw = load_panel(three)
    p1, _ = clean_panel(raw, rules())
    raw2 = raw.copy()
    after = (raw2.token == "A") & (raw2.timestamp >= T0 + 12 * H)
    raw2.loc[after, ["open", "high", "low", "close"]] *= 3
    p2, _ = clean_panel(raw2, rules())
    f1, f2 = p1[p1.filled], p2[p2.filled]
    pd.testing.assert_frame_equal(f1.reset_index(drop=True), f2.reset_index(drop=True))


def test_jump_that_reverts_is_flagged_and_a_step_is_not(three):
    panel, log = clean_panel(load_panel(three), rules())
    j = log[log.action == "jump"]
    assert j[["token", "start", "rows"]].values.tolist() == [["B", T0 + 2 * H, 1]]
    assert "+80% on the previous hour" in j.note.iloc[0] and "-44% the next hour" in j.note.iloc[0]
    assert hours(panel, "B").close.tolist() == [100, 100, 180, 100, 100, 160, 160, 160]      # flagged, kept
    assert not hours(panel, "B").filled.any()
    # neutralised on request: a flat bar at the mean of the neighbours, no longer the exchange's prices
    p2, l2 = clean_panel(load_panel(three), rules(jump_action="interpolate"))
    b = hours(p2, "B").loc[T0 + 2 * H]
    assert [b.open, b.high, b.low, b.close, b.volume, b.filled] == [100, 100, 100, 100, 10, True]
    assert l2[l2.action == "jump_interpolated"].token.tolist() == ["B"]


@pytest.mark.parametrize("closes,flagged", [
    ([100, 100, 60, 100, 100], True),        # -40 %: ln(0.6) = -0.51 beyond ln(1.5) = 0.405 both ways
    ([100, 100, 70, 100, 100], False),       # -30 %: ln(0.7) = -0.36
    ([100, 100, 151, 100, 100], True),       # +51 % both ways
    ([100, 100, 149, 100, 100], False),      # +49 %
    ([100, 100, 180, 180, 100], False),      # two hours up: each hour has one neighbour at its level
    ([100, 160, 260, 160, 100], True),       # +62 % against both neighbours
    ([100, 160, 260, 420, 420], False),      # a rise through the hours, not a spike
])
def test_jump_rule_is_symmetric_in_log_price(closes, flagged):
    _, log = clean_panel(bars("X", T0, closes), rules())
    assert (log.action == "jump").any() == flagged


def test_no_jump_at_a_segment_edge():
    "A spike whose next hour is absent (an outage) cannot be tested: it is not flagged."
    raw = bars("X", T0, [100, 100, 180] + [100] * 10 + [100, 100], skip=set(range(3, 13)))
    panel, log = clean_panel(raw, rules())
    assert "jump" not in set(log.action) and "outage" in set(log.action)


def test_luna_switch_is_split_into_two_tokens():
    luna = pd.concat([bars("LUNA", "2022-05-12 19:00", [80, 81, 82, 0.002, 0.0003, 0.00005]),
                      bars("LUNA", "2022-05-31 06:00", [1.0, 8.5, 8.6, 8.4])], ignore_index=True)
    start = "2022-05-12 19:00"                                # loaded from there: LUNA's first hour is no listing
    panel, log = clean_panel(luna, rules(), start=start)
    assert panel.groupby("token").size().to_dict() == {"LUNA": 6, "LUNA2": 3}
    assert hours(panel, "LUNA2").index.min() == pd.Timestamp("2022-05-31 07:00")      # the opening auction dropped
    assert hours(panel, "LUNA").index.max() == pd.Timestamp("2022-05-13 00:00")       # the classic token to its crash
    assert log[["token", "action", "rows", "new_token"]].values.tolist()[0] == ["LUNA", "split", 4, "LUNA2"]
    assert "outage" not in set(log.action)                    # the weeks between crash and switch belong to no token
    summary = pd.DataFrame({"ticker": ["LUNAUSDT"], "category": ["collapsed_or_rebranded"]})
    q = data_quality(luna, panel, log, summary, categories=token_categories(summary, rules())).set_index("token")
    assert q.loc["LUNA2", "category"] == "layer1_layer2" and q.loc["LUNA", "category"] == "collapsed_or_rebranded"
    assert q.raw_rows.sum() == len(luna) and q.loc["LUNA2", "dropped_rows"] == 1
    assert "split from LUNA" in q.loc["LUNA2", "notes"] and "are LUNA2" in q.loc["LUNA", "notes"]
    # the alternative: cut LUNA at the switch
    cut = rules()
    cut["breaks"][0] = {"token": "LUNA", "action": "cut", "at": "2022-05-28 00:00", "note": "cut at the switch"}
    p2, l2 = clean_panel(luna, cut, start=start)
    assert p2.token.unique().tolist() == ["LUNA"] and l2[l2.action == "cut"].rows.tolist() == [4]
    assert profile_tokens(["BTC", "LUNA"], rules()) == ["BTC", "LUNA", "LUNA2"] and profile_tokens(["LUNA"], cut) == ["LUNA"]


def test_ftt_segment_and_delisting():
    "A `segment` break: nothing filled across it even when the gap is short, and the reopening hour dropped."
    ftt = bars("FTT", "2023-09-22 03:00", [1.3, 1.35, 1.4, 1.42, 1.0, 1.05, 1.06, 1.07], skip={3, 4})  # no 06:00, 07:00
    assert compose_config("experiment=multitoken").experiment.cleaning.breaks[1].at == "2023-09-22 08:00"
    panel, log = clean_panel(ftt, rules(), start="2023-09-22 03:00")
    f = hours(panel, "FTT")
    assert f.index.hour.tolist() == [3, 4, 5, 9, 10] and not f.filled.any()
    assert log[["action", "rows"]].values.tolist() == [["outage", 2], ["segment", 3], ["burn_in", 1]]
    bus = bars("BUSD", T0, [1.0, 1.0, 1.0])
    _, lb = clean_panel(bus, rules())
    assert lb[["action", "start", "rows"]].values.tolist() == [["delisted", T0 + 2 * H, 0]]


def test_a_series_cut_by_start_is_no_listing():
    x = bars("X", "2022-01-01 00:00", [1, 2, 3])
    assert len(clean_panel(x, rules())[0]) == 2                                    # listed after the window: opening dropped
    assert len(clean_panel(x, rules(), start="2022-01-01 00:00")[0]) == 3          # loaded from 2022: not a listing


def test_panel_contract(three):
    panel, _ = clean_panel(load_panel(three), rules(ffill_max_hours=1, interpolate_max_hours=2))
    assert list(panel.columns) == list(PANEL_COLUMNS)
    assert str(panel.timestamp.dtype) == "datetime64[ns]" and panel.filled.dtype == bool
    assert all(panel[c].dtype == np.float64 for c in OHLCV)
    assert not panel.duplicated(["token", "timestamp"]).any()
    assert panel.equals(panel.sort_values(["token", "timestamp"]).reset_index(drop=True))
    assert (panel.timestamp == panel.timestamp.dt.floor("h")).all() and not panel[list(OHLCV)].isna().any().any()
    assert (panel.high >= panel[["open", "close"]].max(axis=1)).all() and (panel.low <= panel[["open", "close"]].min(axis=1)).all()
    steps = panel.groupby("token").timestamp.diff().dropna()
    assert set(steps) == {H, 5 * H}                            # 1 hour, or across A's absent 3-hour outage (+ dropped hour)


def test_bad_rules_and_raw_panels_are_refused(three):
    raw = load_panel(three)
    with pytest.raises(ValidationError, match="jump_threshold"): clean_panel(raw, rules(jump_threshold=0))
    with pytest.raises(ValidationError, match="jump_action"): clean_panel(raw, rules(jump_action="drop"))
    with pytest.raises(DataValidationError, match="lacks a column") as e: clean_panel(raw.drop(columns="close"), rules())
    assert e.value.column == "close"
    with pytest.raises(DataValidationError, match=r"duplicate \(token, timestamp\)"):
        clean_panel(pd.concat([raw, raw.iloc[:1]]), rules())
    with pytest.raises(DataValidationError, match="tz-naive"):
        clean_panel(raw.assign(timestamp=raw.timestamp.dt.tz_localize("UTC")), rules())
    bad = rules()
    bad["breaks"][0]["new_token"] = "A"                       # a split onto an existing token
    luna = pd.concat([bars("A", T0, [1, 2]), bars("LUNA", T0, [3, 4]), bars("LUNA", "2022-06-01", [5, 6])])
    with pytest.raises(ValueError, match="already in the panel"): clean_panel(luna, bad)


# ------------------------------------------------------------------------------------------ tokens and quality
def test_quality_table_by_hand(three):
    raw = load_panel(three)
    panel, log = clean_panel(raw, rules(ffill_max_hours=1, interpolate_max_hours=2))
    summary = pd.DataFrame({"ticker": ["AUSDT", "BUSDT", "CUSDT"], "category": ["defi", "meme", "stablecoin_fiat_gold"]})
    q = data_quality(raw, panel, log, summary)
    assert list(q.columns) == list(QUALITY_COLUMNS) and q.token.tolist() == ["A", "B", "C"]
    a = q.set_index("token").loc["A"]
    assert [a.raw_rows, a.missing_hours, a.panel_rows, a.filled_hours, a.absent_hours, a.outages, a.dropped_rows] == \
        [8, 6, 10, 3, 4, 1, 1]
    assert q.jumps_flagged.tolist() == [0, 1, 0] and q.in_direction_study.tolist() == [True, True, False]
    assert "outage 2021-04-05 06:00 to 2021-04-05 08:00 (3 h absent)" in a.notes
    with pytest.raises(DataValidationError, match="no category"): data_quality(raw, panel, log, summary.iloc[:2])


def test_select_tokens():
    panel, _ = clean_panel(pd.concat([bars("BTC", T0, [1, 2]), bars("LUNA", T0, [3, 4]),
                                      bars("LUNA", "2022-06-01", [5, 6, 7])], ignore_index=True), rules())
    assert select_tokens(panel, ["LUNA"], rules()).token.unique().tolist() == ["LUNA", "LUNA2"]
    assert len(select_tokens(panel, None, rules())) == len(panel)
    with pytest.raises(DataValidationError, match=r"\['ETH'\]"): select_tokens(panel, ["BTC", "ETH"], rules())


# ------------------------------------------------------------------------------------------ the real panel
@pytest.fixture(scope="module")
def real(data_dir):
    return data_dir / CFG.data.hourly_panel, pd.read_csv(data_dir / CFG.data.hourly_summary)


def test_real_three_tokens_match_the_summary(real):
    path, summary = real
    s = summary.set_index("ticker")
    raw = load_panel(path, tokens=["BTC", "FTT", "LUNA"])
    assert raw.groupby("token").size().to_dict() == {t: int(s.loc[f"{t}USDT", "rows"]) for t in ("BTC", "FTT", "LUNA")}
    panel, log = clean_panel(raw, CFG.experiment.cleaning)
    q = data_quality(raw, panel, log, summary, categories=token_categories(summary, CFG.experiment.cleaning)).set_index("token")
    assert q.loc["FTT", "missing_hours"] == s.loc["FTTUSDT", "missing_hours_inside_span"] == 7478
    assert (q.loc["FTT", "outages"], q.loc["FTT", "absent_hours"], q.loc["FTT", "filled_hours"]) == (1, 7467 + 1, 11)
    assert "outage 2022-11-15 05:00 to 2023-09-22 07:00 (7,467 h absent)" in q.loc["FTT", "notes"]
    assert q.loc[["LUNA", "LUNA2"], "raw_rows"].sum() == s.loc["LUNAUSDT", "rows"]
    # LUNA's 449 missing hours: the 437 hours between the classic token's crash and Terra 2.0, and maintenance
    assert q.loc[["LUNA", "LUNA2"], "missing_hours"].sum() + 437 == s.loc["LUNAUSDT", "missing_hours_inside_span"]
    assert (q.loc["LUNA", "last_hour"], q.loc["LUNA2", "first_hour"]) == (pd.Timestamp("2022-05-13 00:00"),
                                                                         pd.Timestamp("2022-05-31 06:00"))
    assert q.loc["BTC", ["panel_rows", "filled_hours", "absent_hours"]].tolist() == [24000, 12, 0]


def test_real_whole_panel(real):
    "Every ticker: rows, missing and zero-volume hours as in the summary; the jumps are the six known events."
    path, summary = real
    raw = load_panel(path)
    panel, log = clean_panel(raw, CFG.experiment.cleaning)
    cats = token_categories(summary, CFG.experiment.cleaning)
    q = data_quality(raw, panel, log, summary, categories=cats).set_index("token")
    s = summary.assign(token=summary.ticker.str.removesuffix("USDT")).set_index("token").sort_index()
    merged = q.rename(index={"LUNA2": "LUNA"}).groupby(level=0)
    assert (merged.raw_rows.sum() == s.rows).all() and (merged.zero_volume_hours.sum() == s.zero_vol_hours).all()
    gap = (merged.missing_hours.sum() - s.missing_hours_inside_span)
    assert gap[gap != 0].to_dict() == {"LUNA": -437}
    assert len(q) == 117 and (q.in_direction_study == ~q.category.eq("stablecoin_fiat_gold")).all()
    # the stablecoins and fiat/gold tokens PROVENANCE lists
    assert direction_excluded(cats) == ["BUSD", "EUR", "PAXG", "SUSD", "TUSD", "USDC", "USDP", "UST"]
    jumps = log[log.action == "jump"]
    assert sorted(zip(jumps.token, jumps.start.dt.strftime("%Y-%m-%d %H:%M"))) == [
        ("AKRO", "2022-12-26 00:00"), ("LUNA", "2022-05-11 12:00"), ("LUNA", "2022-05-12 09:00"),
        ("LUNA", "2022-05-12 10:00"), ("TROY", "2021-09-20 01:00"), ("UST", "2022-05-11 12:00")]
    # every gap of 1-4 hours is a Binance-wide maintenance window, forward-filled; everything else is an outage
    fills = log[log.action == "ffill"]
    assert set(fills.start.dt.strftime("%Y-%m-%d %H:%M")) == {"2021-04-20 02:00", "2021-04-25 05:00", "2021-08-13 02:00",
                                                             "2021-09-29 07:00", "2023-03-24 13:00"}
    assert sorted(log[log.action == "outage"].rows) == [677, 3995, 3995, 3995, 7467]
    assert "interpolate" not in set(log.action)
    assert (q.panel_rows == q.raw_rows + q.filled_hours - q.dropped_rows).all()


def test_multitoken_prepare_stage(tmp_path, data_dir):
    "The stage on two tokens over one month, into a temporary reports folder."
    from volnb.stages import StagePaths, run_stage
    ov = (f"paths.reports_dir={tmp_path}/reports paths.artifacts_dir={tmp_path}/reports/artifacts "
          "experiment.tokens=[BTC,LUNA] experiment.start=2022-05-01T00:00 experiment.end=2022-06-30T23:00")
    nb = run_stage("multitoken_prepare", ov, echo=False)
    paths = StagePaths(compose_config(f"experiment=multitoken {ov}"))
    assert nb == paths.notebook("multitoken_prepare") and nb.exists()
    panel = pd.read_parquet(paths.panel)
    assert panel.token.unique().tolist() == ["BTC", "LUNA", "LUNA2"] and list(panel.columns) == list(PANEL_COLUMNS)
    assert panel.timestamp.min() == pd.Timestamp("2022-05-01 00:00") and panel.timestamp.max() == pd.Timestamp("2022-06-30 23:00")
    q = pd.read_csv(paths.table("data_quality")).set_index("token")
    assert len(q) > 100 and q.in_profile.sum() == 3 and not q.loc["USDC", "in_direction_study"]
    assert q.loc["BTC", "panel_rows"] == 61 * 24 and q.loc["BTC", "first_hour"] == "2022-05-01 00:00:00"
    assert (paths.tables / "data_quality.md").exists()
    log = pd.read_csv(paths.cleaning_log)
    assert set(log.action) >= {"split", "burn_in"} and log.token.nunique() > 3


def test_cpu_profile_is_documented_subset(real):
    "The CPU profile: the majors, every category, late listings of each year, and the breaks; the config's exclusions."
    from volnb.panel import DIRECTION_EXCLUDED_CATEGORIES
    _, summary = real
    e = CFG.experiment
    cats = token_categories(summary, e.cleaning)
    assert set(e.tokens) <= set(cats) and {"BTC", "ETH", "BNB", "LUNA", "FTT", "KEY"} <= set(e.tokens)
    assert {cats[t] for t in e.tokens} == set(summary.category)                  # every category
    late = summary[~summary.first_hour_is_download_window_start].assign(token=lambda d: d.ticker.str.removesuffix("USDT"))
    years = {pd.Timestamp(h).year for t, h in zip(late.token, late.first_hour_utc) if t in set(e.tokens)}
    assert years == {2021, 2022, 2023}
    assert tuple(e.direction_excluded_categories) == DIRECTION_EXCLUDED_CATEGORIES
    assert profile_tokens(e.tokens, e.cleaning)[-1] == "LUNA2"
