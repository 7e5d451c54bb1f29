"""volnb.data: each loader's fixes on the real snapshot, and each bad-input error naming file, column and row."""
import gzip
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from volnb.core import DataValidationError
from volnb import data as D

BITSTAMP = """
https://www.CryptoDataDownload.com
unix,date,symbol,open,high,low,close,Volume BTC,Volume USD
1519862400,2018-03-01 00:00:00,BTC/USD,10000,11000,9900,10900,10,105000
1519776000,2018-02-28 00:00:00,BTC/USD,10500,11100,10000,10000,20,210000
1519689600,2018-02-27 00:00:00,BTC/USD,10300,10800,10200,10500,1050000,100
"""


# --- the fixes PROVENANCE.md lists, on the real files --------------------------------------------
def test_bitstamp_real_fixes(data_dir):
    df = D.load_bitstamp_daily(data_dir / "btc_usd_daily_bitstamp_cdd.csv")
    assert df.index.is_monotonic_increasing and df.index.is_unique and str(df.index.tz) == "UTC"
    assert df.index[0] == pd.Timestamp("2014-11-28", tz="UTC")
    assert df.index[-1] == pd.Timestamp("2025-07-04", tz="UTC")        # partial 2025-07-05 dropped
    assert len(df) == 3873 - 1
    ok = df.volume_btc > 0
    vwap = df.volume_usd[ok] / df.volume_btc[ok]
    rel = vwap / df.close[ok]
    # after the swap fix the implied VWAP is a price: near the close on both sides of 2018-02-28
    assert rel[df.index[ok] < "2018-02-28"].median() == pytest.approx(1, abs=0.05)
    assert rel[df.index[ok] >= "2018-02-28"].median() == pytest.approx(1, abs=0.05)
    assert list(df.columns) == ["open", "high", "low", "close", "volume_btc", "volume_usd"]
    assert (df.dtypes == "float64").all()


def test_bitstamp_without_swap_fix_is_rejected(data_dir):
    with pytest.raises(DataValidationError, match="implied VWAP") as e:
        D.load_bitstamp_daily(data_dir / "btc_usd_daily_bitstamp_cdd.csv", fix_volume_swap=False)
    assert e.value.column == "Volume USD" and e.value.row is not None


def test_coinmetrics_real(data_dir):
    df = D.load_coinmetrics_daily(data_dir / "btc_onchain_daily_coinmetrics_community.csv")
    assert df.index[-1] == pd.Timestamp("2026-03-22", tz="UTC")       # reference-rate-only day dropped
    assert df.loc["2016-01-01":"2021-09-30", ["FlowInExNtv", "FlowOutExNtv", "CapMrktCurUSD"]].notna().all().all()


def test_cryptoquant_real(data_dir):
    cq = D.load_cryptoquant_dir(data_dir / "onchain_cryptoquant_style_heun630")
    assert cq.shape[1] == 30
    assert cq["MVRV_ratio"].first_valid_index() == pd.Timestamp("2009-10-05", tz="UTC")   # BOM and YYYY.M.D parsed
    assert cq["funding_fee"].loc["2020-10-29":"2020-10-30"].isna().all()                # real gaps stay NaN
    assert cq.index.is_monotonic_increasing


def test_funding_and_fear_greed_real(data_dir):
    f = D.load_funding_daily(data_dir / "btc_funding_daily_binance_usdtm.csv")
    assert f.index[0] == pd.Timestamp("2019-09-10", tz="UTC") and f.index[-1] == pd.Timestamp("2026-03-23", tz="UTC")
    with pytest.warns(UserWarning, match="1 missing D"):
        g = D.load_fear_greed(data_dir / "fear_greed_daily_alternative_me.csv")
    assert g.fear_greed_index.between(0, 100).all() and len(g) == 2639


def test_minute_bars_merge_real(data_dir):
    i = data_dir / "intraday"
    a = D.load_minute_bars(i / "btcusdt_1m_binance_spot_freqtrade_2023-03-16_2023-05-01.json.gz")
    b = D.load_minute_bars(i / "btcusdt_1m_binance_spot_freqtrade_2023-04-05_2023-05-05.json.gz")
    m = D.merge_minute_bars([a, b], ["2023-03-16", "2023-04-05"])
    assert m.index.is_unique and m.index.is_monotonic_increasing
    assert len(m) == len(a) + len(b) - len(a.index.intersection(b.index))
    assert len(a.index.intersection(b.index)) == 38245                 # PROVENANCE.md: identical overlap
    stale = m.loc["2023-03-24 11:28":"2023-03-24 12:39", "stale"]
    assert stale.sum() == 72                                           # the halt's flat zero-volume bars
    us = D.load_minute_bars(i / "btcusdt_1m_binanceus_2023-03-01_2023-03-21.csv.gz")
    assert len(us) == 30240 and str(us.index.tz) == "UTC"
    fe = D.load_minute_bars(i / "btcusdt_1m_binance_spot_freqtrade_2026-03-23_2026-04-22.feather")
    assert len(fe) == 43199


def test_hourly_panel_subset_real(data_dir):
    p = D.load_hourly_panel(data_dir / "binance_spot_usdt_1h_116tokens_2021-2023.csv.gz", tickers=["BTCUSDT", "FTTUSDT"])
    assert set(p.ticker) == {"BTCUSDT", "FTTUSDT"}
    btc = p[p.ticker == "BTCUSDT"].set_index("timestamp")
    assert btc.index.is_monotonic_increasing and btc.index[0] == pd.Timestamp("2021-04-04 20:00", tz="UTC")
    summary = D.load_token_summary(data_dir / "binance_spot_usdt_1h_116tokens_summary.csv")
    gaps = D.find_gaps(p[p.ticker == "FTTUSDT"].set_index("timestamp").index, "h")
    assert len(gaps) == summary.loc["FTTUSDT", "missing_hours_inside_span"] == 7478


# --- bad input -----------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match="file not found") as e:
        D.load_bitstamp_daily(tmp_path / "nope.csv")
    assert "nope.csv" in str(e.value)


@pytest.mark.parametrize("edit, column, row, msg", [
    (("close,Volume BTC", "price,Volume BTC"), "close", None, "missing column"),
    (("1519776000,", "17x,"), "unix", 4, "unparsable date"),
    (("10000,20,210000", "nan,20,210000"), "close", 4, "missing (NaN) value"),
    (("10000,20,210000", "inf,20,210000"), "close", 4, "infinite value"),
    (("1519689600,", "1519776000,"), "unix", 5, "duplicate timestamp"),
    (("10500,11100,10000,10000", "10500,11100,10000,-1"), "close", 4, "impossible"),
])
def test_bitstamp_bad_input(write, edit, column, row, msg):
    p = write("bs.csv", BITSTAMP.replace(*edit))
    with pytest.raises(DataValidationError, match=msg.replace("(", r"\(").replace(")", r"\)")) as e:
        D.load_bitstamp_daily(p)
    assert e.value.column == column and e.value.file == p
    if row is not None: assert e.value.row == row


def test_unsorted_rows_rejected(write):
    lines = BITSTAMP.strip().splitlines()
    shuffled = "\n".join(lines[:2] + [lines[3], lines[2], lines[4]]) + "\n"
    with pytest.raises(DataValidationError, match="out of order") as e:
        D.load_bitstamp_daily(write("bs.csv", shuffled))
    assert e.value.column == "unix"


def test_cryptoquant_bad_input(write):
    with pytest.raises(DataValidationError, match="unparsable date") as e:
        D.load_cryptoquant_series(write("MVRV_ratio.csv", "\ufeffDate,Data\n2019.3.30,1.2\n2019/3/31,1\n"))
    assert (e.value.column, e.value.row) == ("Date", 3)
    with pytest.raises(DataValidationError, match="must be > 0") as e:
        D.load_cryptoquant_series(write("MVRV_ratio.csv", "\ufeffDate,Data\n2019.3.30,1.2\n2019.3.31,0\n"))
    assert e.value.row == 3
    with pytest.raises(DataValidationError, match="missing column"):
        D.load_cryptoquant_series(write("x.csv", "\ufeffDay,Data\n2019.3.30,1.2\n"))


def test_coinmetrics_inf_and_order(write):
    good = "time,PriceUSD,FlowInExNtv,FlowOutExNtv,CapMrktCurUSD\n2020-01-01,1,1,1,1\n2020-01-02,2,2,2,2\n"
    with pytest.raises(DataValidationError, match="infinite") as e:
        D.load_coinmetrics_daily(write("cm.csv", good.replace(",2,2,2,2", ",2,inf,2,2")))
    assert (e.value.column, e.value.row) == ("FlowInExNtv", 3)
    with pytest.raises(DataValidationError, match="missing 1 ?|missing D|1 missing"):
        D.load_coinmetrics_daily(write("cm.csv", good.replace("2020-01-02", "2020-01-03")))


def test_hourly_panel_bad_ohlc(write):
    p = write("p.csv", "date,open,high,low,close,volume,ticker\n2021-04-04 20:00:00,1,0.5,0.4,0.9,1,XUSDT\n")
    with pytest.raises(DataValidationError, match="impossible OHLC") as e:
        D.load_hourly_panel(p)
    assert (e.value.column, e.value.row) == ("high", 2)


def test_minute_bars_bad_json(tmp_path):
    p = tmp_path / "x.json.gz"
    with gzip.open(p, "wt") as f: f.write(json.dumps([[1617321600000, 1, 2, 0.5, 1.5, 3], [1617321660000, 1, 2]]))
    with pytest.raises(DataValidationError, match="wrong number of fields") as e:
        D.load_minute_bars(p)
    assert e.value.row == 2
