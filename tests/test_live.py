"""The live feed (volnb.messages, volnb.bars, volnb.replay, volnb.feeds) on the real WebSocket recordings (PROVENANCE
I7, I10): readers, parsers, bars, the loopback replay server and the client — end to end, through a dropped
connection, and live features against batch features.
Kline mode on the real one-minute Binance files (PROVENANCE I2, I3): the bar file played as `btcusdt@kline_1m` with
the REST klines endpoint, warm-up, scores from the first streamed bar, reconnects and no look-ahead.

Every replay runs at speed 0 (as fast as possible) or at a high speed, on 127.0.0.1; nothing touches the network.
The only hand-made data are the few malformed lines and the synthetic heartbeat message, named as such.
"""
from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from volnb.core import DataValidationError
from volnb.bars import BAR_FIELDS, BarStream, KlineStream, MinuteBarBuilder, bars_frame, bars_from_recording
from volnb.feeds import FeedClient, FeedError, feature_input, run_live
from volnb.messages import (Kline, Quote, Trade, iso_ns, klines_from_rest, parse_binance, parse_coinbase,
                            read_binance_recording, read_coinbase_recording)
from volnb.replay import REPLAY_END, ReplayFaults, ReplayServer, parse_faults

TRADE_COLS = ["open", "high", "low", "close", "volume", "n_trades", "incomplete"]


@pytest.fixture(scope="module")
def intraday(data_dir):
    return data_dir / "intraday"


@pytest.fixture(scope="module")
def spot(intraday):
    return [intraday / "ws_binance_spot_btcusdt_20240808_2354-2400_hftbacktest.gz",
            intraday / "ws_binance_spot_btcusdt_20240809_0000-0005_hftbacktest.gz"]


@pytest.fixture(scope="module")
def usdm(intraday):
    return intraday / "ws_binance_usdm_btcusdt_20240808_2354-2400_hftbacktest.gz"


@pytest.fixture(scope="module")
def coinbase(intraday):
    return intraday / "ws_coinbase_exchange_legacy_2021-04-17_cryptofeed.txt.gz"


@pytest.fixture(scope="module")
def batch(spot):
    return bars_from_recording(spot)


@pytest.fixture(scope="module")
def batch0(spot):
    return bars_from_recording(spot[0])


@pytest.fixture(scope="module")
def recorded_trades(spot):
    "The recorded spot trades as a frame (read with json, independently of the parser)."
    rows = [json.loads(raw)["data"] for p in spot for _, raw in read_binance_recording(p)
            if raw.startswith('{"stream":"btcusdt@trade"')]
    return pd.DataFrame({"time": pd.to_datetime([d["T"] for d in rows], unit="ms", utc=True),
                         "price": [float(d["p"]) for d in rows], "qty": [float(d["q"]) for d in rows],
                         "id": [d["t"] for d in rows]})


def replay(paths, client_kw=None, collect=True, **server_kw):
    "Play `paths` through a ReplayServer and a FeedClient; (bars frame, client, server)."
    async def main():
        async with ReplayServer(paths, **server_kw) as srv:
            feed = FeedClient.replay(srv, **{"backoff": 0.01, "backoff_max": 0.05, "seed": 0, **(client_kw or {})})
            got = [b async for b in feed.bars()]
            return bars_frame(got), feed, srv
    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------ readers

def test_binance_reader_counts_match_provenance(spot, usdm):
    expected = [(41_249, {"btcusdt@bookTicker": 28_040, "btcusdt@trade": 9_757, "btcusdt@depth@100ms": 3_451}),
                (58_325, {"btcusdt@bookTicker": 45_134, "btcusdt@trade": 10_147, "btcusdt@depth@100ms": 3_044})]
    for path, (lines, streams) in zip(spot, expected):
        msgs = list(read_binance_recording(path, lines=True))
        snapshot_lines = lines - len(msgs)
        assert snapshot_lines == (1 if "20240808" in path.name else 0)
        assert Counter(json.loads(r)["stream"] for _, _, r in msgs) == Counter(streams)
        ts = [t for _, t, _ in msgs]
        assert ts == sorted(ts)
    # the snapshot line of the spot 0808 file is line 8, of the futures file line 55
    assert [n for n, _, _ in read_binance_recording(spot[0], lines=True)][6:8] == [7, 9]
    fut = list(read_binance_recording(usdm, lines=True))
    assert len(fut) == 93_954 - 1 and [n for n, _, _ in fut][53:55] == [54, 56]
    assert Counter(json.loads(r)["stream"] for _, _, r in fut)["btcusdt@trade"] == 21_313


def test_coinbase_reader(coinbase):
    msgs = list(read_coinbase_recording(coinbase))
    types = Counter(json.loads(r)["type"] for _, r in msgs)
    assert types == Counter({"l2update": 9_719, "ticker": 107, "match": 97, "last_match": 10, "snapshot": 10, "subscriptions": 3})
    sent = [json.loads(r) for _, r in read_coinbase_recording(coinbase, sent=True) if '"subscribe"' in r]
    assert [m["channels"] for m in sent] == [["level2"], ["ticker"], ["matches"]]
    assert msgs[0][0] == 1618677817061845000 and msgs[-1][0] == 1618677847846469900


@pytest.mark.parametrize("text, reader, line", [
    ("1723161254087891268 {\"stream\":\"a\",\"data\":{}}\n\nnot-a-time {}\n", read_binance_recording, 3),
    ("1723161254087891268 {\"stream\":\"a\"\n", read_binance_recording, 1),
    ("1618677817.06: {\"type\":\"x\"}\nwss://ws-feed.pro.coinbase.com <= 1618677817.02: {}\n", read_coinbase_recording, 2),
    ("1618677817.06 {\"type\":\"x\"}\n", read_coinbase_recording, 1),
])
def test_bad_lines_name_file_and_line(tmp_path, text, reader, line):
    p = tmp_path / "session.txt.gz"
    with gzip.open(p, "wt") as f: f.write(text)           # hand-made malformed lines
    with pytest.raises(DataValidationError) as e:
        list(reader(p))
    assert e.value.file == str(p) and e.value.row == line
    assert f"row {line}" in str(e.value) and "session.txt.gz" in str(e.value)


def test_bad_json_and_bad_field_name_file_line_field(tmp_path, spot):
    good = [r for _, r in read_binance_recording(spot[0])][:20]
    p = tmp_path / "cut.txt"
    p.write_text("\n".join(f"1 {r}" for r in good) + "\n2 " + good[3][:-9] + "\n")      # a truncated trade message
    with pytest.raises(DataValidationError, match=r"not a JSON object.*row 21"):
        bars_from_recording(p)
    p.write_text("\n".join(f"1 {r}" for r in good) + "\n2 " + good[3].replace('"p":', '"p";') + "\n")
    with pytest.raises(DataValidationError, match=r"invalid JSON.*cut.txt, row 21"):
        bars_from_recording(p)
    p.write_text("\n".join(f"1 {r}" for r in good[:5]) + "\n2 " + good[3].replace('"p":"61837.63000000"', '"p":"n/a"') + "\n")
    with pytest.raises(DataValidationError) as e:
        bars_from_recording(p)
    assert (e.value.file, e.value.row, e.value.column, e.value.value) == (str(p), 6, "p", "n/a")


# ------------------------------------------------------------------------------------------------ parsers

def test_parse_binance_fields(spot, usdm):
    msgs = [json.loads(r) for _, r in read_binance_recording(spot[0])][:12]
    trade = parse_binance(msgs[3])
    assert trade == Trade(1_723_161_255_342_000_000, 61837.63, 0.02, "sell", 3_735_683_259, "BTCUSDT", 3_735_683_259)
    q = parse_binance(msgs[2])
    assert q == Quote(None, 61837.63, 3.78826, 61837.64, 1.54698, "BTCUSDT", 50_093_239_212)   # spot: no time
    assert parse_binance(msgs[0]) is None                                                    # depth
    assert parse_binance(msgs[3]["data"]) == trade                                           # raw stream
    fut = [parse_binance(json.loads(r)) for _, r in list(read_binance_recording(usdm))[:200]]
    fq = next(e for e in fut if isinstance(e, Quote))
    assert fq.ts is not None and fq.ts % 1_000_000 == 0 and fq.ask > fq.bid                  # futures: T is used
    ft = next(e for e in fut if isinstance(e, Trade))
    assert (ft.side, ft.symbol) in {("buy", "BTCUSDT"), ("sell", "BTCUSDT")}


def test_parse_coinbase_fields(coinbase):
    msgs = [json.loads(r) for _, r in read_coinbase_recording(coinbase)]
    last = next(m for m in msgs if m["type"] == "last_match")
    assert parse_coinbase(last) == Trade(iso_ns("2021-04-17T16:43:30.244075Z"), 14.7775, 0.04, "buy", 881_613, "BAND-GBP", 333_938_798)
    tick = next(m for m in msgs if m["type"] == "ticker")
    assert parse_coinbase(tick) == Quote(1_618_677_810_244_075_000, 14.755, None, 14.806, None, "BAND-GBP", 333_938_798)
    # the ticker reports the taker side, the match the maker side: they must be opposite for the same trade
    assert tick["side"] == parse_coinbase(last).side
    assert parse_coinbase({**tick, "best_bid_size": "2.5", "best_ask_size": "0.5"}).bid_qty == 2.5
    assert sum(isinstance(parse_coinbase(m), Trade) for m in msgs) == 107
    assert all(parse_coinbase(m) is None for m in msgs if m["type"] in ("l2update", "snapshot", "subscriptions"))
    with pytest.raises(DataValidationError, match="column 'side'"):
        parse_coinbase({**last, "side": "up"})


# ------------------------------------------------------------------------------------------------ bars

def test_batch_bars_equal_groupby_of_recorded_trades(batch, recorded_trades):
    g = recorded_trades.groupby(recorded_trades.time.dt.floor("min"))
    exp = pd.DataFrame({"open": g.price.first(), "high": g.price.max(), "low": g.price.min(),
                        "close": g.price.last(), "volume": g.qty.sum(), "n_trades": g.size()})
    assert list(batch.index) == list(exp.index) and len(batch) == 12
    np.testing.assert_array_equal(batch[["open", "high", "low", "close"]].to_numpy(), exp[["open", "high", "low", "close"]].to_numpy())
    np.testing.assert_array_equal(batch.n_trades.to_numpy(), exp.n_trades.to_numpy())
    np.testing.assert_allclose(batch.volume.to_numpy(), exp.volume.to_numpy(), rtol=1e-12)
    assert batch.n_trades.sum() == 19_904 and batch.attrs["stats"]["gaps"] == 0
    assert batch.incomplete.tolist() == [True] + [False] * 10 + [True]
    assert list(batch.columns) == BAR_FIELDS
    # quote features: spot spread is tiny and positive, imbalance in [-1, 1]
    assert (batch.spread_bps > 0).all() and (batch.spread_bps < 1).all()
    assert batch.ob_imbalance.between(-1, 1).all() and batch.n_quotes.sum() == 28_040 + 45_134 - 1


def test_spread_and_imbalance_by_hand(spot, batch):
    "The 23:56 bar's quote columns recomputed from the recorded bookTicker messages it holds."
    rows, cur = [], None
    for p in spot:
        for _, raw in read_binance_recording(p):
            m = json.loads(raw)
            if m["stream"] == "btcusdt@trade": cur = pd.Timestamp(m["data"]["T"], unit="ms", tz="UTC").floor("min")
            elif m["stream"] == "btcusdt@bookTicker" and cur is not None:
                d = m["data"]; rows.append((cur, float(d["b"]), float(d["B"]), float(d["a"]), float(d["A"])))
    q = pd.DataFrame(rows, columns=["bar", "b", "B", "a", "A"])
    q = q[q.bar == pd.Timestamp("2024-08-08 23:56", tz="UTC")]
    bar = batch.loc["2024-08-08 23:56"]
    np.testing.assert_allclose(bar.spread_bps, (1e4 * (q.a - q.b) / ((q.a + q.b) / 2)).mean(), rtol=1e-10)
    np.testing.assert_allclose(bar.ob_imbalance, ((q.B - q.A) / (q.B + q.A)).mean(), rtol=1e-10)
    assert bar.n_quotes == len(q)


def test_dedupe_and_late_trades_on_recorded_trades(spot, batch0):
    events = [parse_binance(json.loads(r)) for _, r in read_binance_recording(spot[0])]
    trades = [e for e in events if isinstance(e, Trade)]
    # replay the real trades with every 50th one repeated and one 23:55 trade held back until 23:57 has begun
    late = next(t for t in trades if pd.Timestamp(t.ts, tz="UTC").floor("min") == pd.Timestamp("2024-08-08 23:55", tz="UTC"))
    b, out, held = MinuteBarBuilder(), [], True
    for i, t in enumerate(trades):
        if t is late: continue
        out += b.add_trade(t)
        if i % 50 == 0: out += b.add_trade(t)
        if held and pd.Timestamp(t.ts, tz="UTC").minute == 57:
            out += b.add_trade(late); held = False
    out += b.flush()
    got = bars_frame(out)
    assert b.duplicates == len(range(0, len(trades), 50)) - (trades.index(late) % 50 == 0)
    assert b.late == 1 and b.late_trades[0] is late
    ref = batch0
    assert list(got.index) == list(ref.index)
    diff = got.n_trades - ref.n_trades
    assert diff.loc["2024-08-08 23:55"] == -1 and (diff.drop(pd.Timestamp("2024-08-08 23:55", tz="UTC")) == 0).all()
    np.testing.assert_allclose(got.volume.loc["2024-08-08 23:55"], ref.volume.loc["2024-08-08 23:55"] - late.qty, rtol=1e-12)


def test_gap_in_a_recording_marks_bars_incomplete(spot, tmp_path):
    "Recorded lines with 300 trade messages cut out of 23:57: that bar and the resuming one are incomplete."
    lines = gzip.open(spot[0], "rt").read().splitlines()
    trade_lines = [i for i, l in enumerate(lines) if '"btcusdt@trade"' in l[:45]]
    cut = set(trade_lines[4500:4800])
    p = tmp_path / "cut.gz"
    with gzip.open(p, "wt") as f: f.write("\n".join(l for i, l in enumerate(lines) if i not in cut) + "\n")
    bars = bars_from_recording(p)
    st = bars.attrs["stats"]
    assert (st["gaps"], st["missing"], st["unfilled"]) == (1, 300, 1)
    assert bars.n_trades.sum() == 9_757 - 300
    minute = lambda i: pd.Timestamp(json.loads(lines[trade_lines[i]].split(" ", 1)[1])["data"]["T"], unit="ms", tz="UTC").floor("min")
    marked = set(pd.date_range(minute(4499), minute(4800), freq="min")) | {bars.index[0], bars.index[-1]}
    assert set(bars.index[bars.incomplete]) == marked and len(marked) < len(bars)


# ------------------------------------------------------------------------------------------------ replay + client

def test_replay_end_to_end_equals_batch(spot, batch):
    live, feed, srv = replay(spot)
    pd.testing.assert_frame_equal(live, batch)
    st = feed.stats
    assert st["messages"] == srv.sent == 9_757 + 28_040 + 10_147 + 45_134
    assert (st["reconnects"], st["gaps"], st["duplicates"], st["late"], st["bad_messages"]) == (0, 0, 0, 0, 0)
    assert feed.status()["last_bar"] == "2024-08-09T00:05:00+00:00"
    json.dumps(feed.status())


def test_disconnect_mid_replay_reconnects_and_backfills(spot, batch):
    "The server drops the connection three times; 1,500 recorded lines pass during each outage."
    live, feed, srv = replay(spot, drop_after=[20_000, 45_000, 70_000], missed_on_drop=1_500)
    st = feed.stats
    assert srv.drops == 3 and st["reconnects"] == 3 and st["connections"] == 4
    assert st["gaps"] == 3 and st["missing"] > 0 and st["backfilled"] == st["missing"] and st["unfilled"] == 0
    assert (st["duplicates"], st["late"]) == (0, 0)
    # no lost or duplicated bar and identical trades per bar
    pd.testing.assert_frame_equal(live[TRADE_COLS], batch[TRADE_COLS])
    assert live.n_trades.sum() == batch.n_trades.sum() == st["trades"]
    # what cannot come back: the quotes sent during the outages
    assert live.n_quotes.sum() < batch.n_quotes.sum()
    assert st["messages"] < srv.sent + 1


def test_overlap_after_reconnect_is_deduplicated(spot, batch0):
    "The server repeats the last 600 recorded lines after the reconnect: repeated trades and quotes are dropped."
    live, feed, srv = replay(spot[0], drop_after=15_000, missed_on_drop=-600)
    st = feed.stats
    # (trades still in the server's send buffer when the connection was cut were never received: not duplicates)
    assert st["reconnects"] == 1 and st["gaps"] == 0 and st["duplicates"] > 20 and st["late"] == 0
    pd.testing.assert_frame_equal(live[TRADE_COLS], batch0[TRADE_COLS])


def test_disconnect_at_speed_backfills_what_the_clock_passed(spot, batch0):
    "At 300× real time the outage is wall-clock time; the REST endpoint serves only trades already played."
    live, feed, srv = replay(spot[0], speed=300.0, drop_after=12_000, client_kw={"backoff": 0.2, "jitter": 0})
    st = feed.stats
    assert st["reconnects"] == 1 and st["gaps"] == 1 and st["backfilled"] == st["missing"] > 0
    pd.testing.assert_frame_equal(live[TRADE_COLS], batch0[TRADE_COLS])


def test_rest_historical_trades(spot):
    async def main():
        async with ReplayServer(spot[0]) as srv:
            url = f"{srv.rest_url}/api/v3/historicalTrades"
            get = lambda **p: asyncio.to_thread(requests.get, url, params=p, timeout=5)
            before = await get(symbol="BTCUSDT", fromId=3_735_683_259, limit=3)
            feed = FeedClient.replay(srv)
            [b async for b in feed.bars()]
            after = await get(symbol="BTCUSDT", fromId=3_735_683_259, limit=3)
            latest = await get(symbol="BTCUSDT", limit=2)
            bad = await get(symbol="ETHUSDT", fromId=1)
            too_many = await get(symbol="BTCUSDT", limit=5000)
            other = await asyncio.to_thread(requests.get, f"{srv.rest_url}/api/v3/nothing", timeout=5)
            return before, after, latest, bad, too_many, other
    before, after, latest, bad, too_many, other = asyncio.run(main())
    assert before.status_code == 200 and before.json() == []          # nothing played yet: no future trades
    assert after.headers["Content-Type"] == "application/json"
    rows = after.json()
    assert rows[0] == {"id": 3_735_683_259, "price": "61837.63000000", "qty": "0.02000000", "quoteQty": "1236.75260000",
                       "time": 1_723_161_255_342, "isBuyerMaker": True, "isBestMatch": True}
    assert [r["id"] for r in rows] == [3_735_683_259, 3_735_683_260, 3_735_683_261]
    ids = [json.loads(r)["data"]["t"] for _, r in read_binance_recording(spot[0]) if r.startswith('{"stream":"btcusdt@trade"')]
    assert [r["id"] for r in latest.json()] == ids[-2:]
    assert bad.status_code == 400 and bad.json()["code"] == -1121
    assert too_many.status_code == 400 and other.status_code == 404


def test_raw_stream_path_and_unknown_path(spot):
    "`/ws/<stream>` sends the bare `data` objects; a path Binance does not serve is refused during the handshake."
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def main():
        async with ReplayServer(spot[0]) as srv:
            async with connect(f"ws://127.0.0.1:{srv.port}/ws/btcusdt@trade", close_timeout=0.1) as ws:
                first = [json.loads(await ws.recv()) for _ in range(3)]
            with pytest.raises(InvalidStatus, match="404"):
                async with connect(f"ws://127.0.0.1:{srv.port}/nowhere"): pass
            return first
    first = asyncio.run(main())
    assert [m["t"] for m in first] == [3_735_683_259, 3_735_683_260, 3_735_683_261] and "stream" not in first[0]
    assert parse_binance(first[0]).trade_id == 3_735_683_259


def test_feature_input_marks_holes(batch):
    bar = batch.reset_index().to_dict("records")[3]
    assert feature_input(bar)["stale"] is False and set(feature_input(bar)) == {"timestamp", "open", "high", "low", "close",
                                                                                "volume", "n_trades", "spread_bps", "ob_imbalance", "stale"}
    assert feature_input({**bar, "incomplete": True})["stale"] is True
    assert feature_input({**bar, "incomplete": True}, incomplete_as_hole=False)["stale"] is False
    c = bar["close"]
    assert feature_input({**bar, "volume": 0.0, "n_trades": 0, "open": c, "high": c, "low": c})["stale"] is True


def test_coinbase_replay_equals_batch_and_gap_is_counted(coinbase):
    batch = bars_from_recording(coinbase, symbol="SKL-USD")
    assert batch.n_trades.sum() == 53 and len(batch) == 2
    live, feed, _ = replay(coinbase, client_kw={"symbol": "SKL-USD"})
    pd.testing.assert_frame_equal(live, batch)
    assert feed.subscribed == [{"name": "matches", "product_ids": ["SKL-USD"]}, {"name": "ticker", "product_ids": ["SKL-USD"]}]
    # a drop after 20 messages, 3,000 recorded lines missed: Coinbase has no backfill here, the gap is counted
    live, feed, srv = replay(coinbase, drop_after=20, missed_on_drop=3_000, client_kw={"symbol": "SKL-USD"})
    st = feed.stats
    assert srv.drops == 1 and st["reconnects"] == 1 and st["gaps"] == 1 and st["missing"] > 0
    assert st["backfilled"] == 0 and st["unfilled"] == 1
    assert live.n_trades.sum() == 53 - st["missing"] and live.incomplete.all()


def test_coinbase_heartbeat_reveals_missed_trades():
    "A synthetic heartbeat whose last_trade_id is ahead of the last trade seen: the gap is counted, the bar marked."
    feed = FeedClient("coinbase", symbol="SKL-USD")
    m = {"type": "match", "trade_id": 10, "side": "sell", "size": "1", "price": "0.5", "product_id": "SKL-USD",
         "sequence": 100, "time": "2021-04-17T16:43:01.000000Z"}
    feed._on_raw(json.dumps(m))
    feed._on_raw(json.dumps({"type": "heartbeat", "last_trade_id": 13, "product_id": "SKL-USD", "sequence": 120,
                             "time": "2021-04-17T16:43:20.000000Z"}))
    out = feed._on_raw(json.dumps({**m, "trade_id": 14, "sequence": 130, "time": "2021-04-17T16:44:02.000000Z"}))
    assert (feed.stats["gaps"], feed.stats["missing"], feed.stats["heartbeats"]) == (1, 3, 1)
    assert len(out) == 1 and out[0]["incomplete"] and feed.stream.builder.incomplete


def test_bad_subscription_and_unreachable_server_give_up(coinbase):
    async def main():
        async with ReplayServer(coinbase) as srv:
            bad = FeedClient.replay(srv, symbol="BTC-USD", backoff=0.01, max_reconnects=1)
            with pytest.raises(FeedError, match="BTC-USD is not a valid product"):
                [b async for b in bad.bars()]
            port = srv.port
        gone = FeedClient("binance", url=f"ws://127.0.0.1:{port}/stream?streams=btcusdt@trade", backoff=0.01, max_reconnects=2)
        with pytest.raises(FeedError, match="gave up after 3 failed connections"):
            [b async for b in gone.bars()]
        return bad, gone
    bad, gone = asyncio.run(main())
    assert bad.connections == 2 and gone.reconnects == 2 and gone.connections == 0


def test_silent_connection_is_dropped_by_the_watchdog():
    "A server that accepts and never sends: after stale_after the client reconnects (then it is stopped)."
    from websockets.asyncio.server import serve

    async def main():
        async def silent(ws): await ws.wait_closed()
        async with serve(silent, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            feed = FeedClient("binance", url=f"ws://127.0.0.1:{port}/stream?streams=btcusdt@trade", stale_after=0.2, backoff=0.01)
            task = asyncio.create_task(anext(feed.bars(), None))
            while feed.connections < 3: await asyncio.sleep(0.05)
            feed.stop()
            assert await asyncio.wait_for(task, 5) is None
            return feed
    feed = asyncio.run(main())
    assert feed.reconnects >= 2 and any("no message for 0.2 s" in e for e in feed.errors)


# ------------------------------------------------------------------------------------------------ features

def test_live_features_equal_batch_features(spot, batch):
    "OnlineFeatures fed bar by bar from the replayed feed gives the rows bar_features gives on the batch bars."
    from volnb.intraday import OnlineFeatures, bar_features
    feats = ["rv_1m", "rv_5m", "ret_5m", "hl_range", "spread_bps", "trade_intensity", "ob_imbalance"]
    rows, seen = {}, []

    async def on_features(bar, f):          # an async callback, as a service's would be
        rows[bar["timestamp"]] = f

    async def main():
        async with ReplayServer(spot, drop_after=50_000, missed_on_drop=500) as srv:
            feed = FeedClient.replay(srv, backoff=0.01, seed=0)
            return await run_live(feed, OnlineFeatures(history_bars=6, features=feats), on_features, on_bar=seen.append)
    stats = asyncio.run(main())
    assert stats["gaps"] == 1 and stats["backfilled"] == stats["missing"] > 0
    assert len(seen) == 12
    live = pd.DataFrame.from_dict(rows, orient="index")
    # the first and last bars are incomplete (holes): rows need five returns after 23:55, so 00:00 .. 00:04
    assert list(live.index) == list(pd.date_range("2024-08-09 00:00", "2024-08-09 00:04", freq="min", tz="UTC"))
    ref = bar_features(pd.DataFrame([feature_input(b) for b in batch.reset_index().to_dict("records")]).set_index("timestamp"))
    trade_feats = ["rv_1m", "rv_5m", "ret_5m", "hl_range", "trade_intensity"]
    np.testing.assert_array_equal(live[trade_feats].to_numpy(), ref.loc[live.index, trade_feats].to_numpy())
    # quote features equal where no outage touched the bar (the outage lost quotes of one bar)
    got = bars_frame(seen)
    same = [t for t in live.index if got.loc[t, "n_quotes"] == batch.loc[t, "n_quotes"]]
    assert 3 <= len(same) < len(live)
    np.testing.assert_array_equal(live.loc[same, ["spread_bps", "ob_imbalance"]].to_numpy(),
                                  ref.loc[same, ["spread_bps", "ob_imbalance"]].to_numpy())


# ------------------------------------------------------------------------------------------------ kline mode

OHLCV = ["open", "high", "low", "close", "volume"]
START = pd.Timestamp("2023-04-20 13:00", tz="UTC")        # a busy afternoon of the I3 file
MIN = pd.Timedelta(minutes=1)


@pytest.fixture(scope="module")
def i3_path(intraday):
    return intraday / "btcusdt_1m_binance_spot_freqtrade_2023-04-05_2023-05-05.json.gz"


@pytest.fixture(scope="module")
def i3(i3_path):
    from volnb.data import load_minute_bars
    return load_minute_bars(i3_path)


def same_bars(got: pd.DataFrame, ref: pd.DataFrame):
    "Bars equal bit for bit: open times and OHLCV."
    assert list(got.index) == list(ref.index)
    np.testing.assert_array_equal(got[OHLCV].to_numpy(), ref[OHLCV].to_numpy())


def kline_replay(bars, client_kw=None, **server_kw):
    "Play a bar frame as klines to a FeedClient; (bars frame, client stats, server)."
    async def main():
        async with ReplayServer(bars, **server_kw) as srv:
            feed = FeedClient.replay(srv, **{"backoff": 0.01, "backoff_max": 0.05, "seed": 0, **(client_kw or {})})
            return bars_frame([b async for b in feed.bars()]), feed.stats, srv
    return asyncio.run(main())


def test_kline_parser_field_values(i3):
    "The server's kline message of a real bar parses back to the file's values; Binance's documented layout too."
    srv = ReplayServer(i3, start=START, end=START + 3 * MIN)
    msg = json.loads(srv.raws[1])
    assert msg["stream"] == "btcusdt@kline_1m" and msg["data"]["e"] == "kline"
    k = msg["data"]["k"]
    t = (START + MIN).value // 1_000_000
    assert (k["t"], k["T"], msg["data"]["E"], k["i"], k["x"], k["s"]) == (t, t + 59_999, t + 60_000, "1m", True, "BTCUSDT")
    assert not {"n", "q", "V", "Q", "f", "L", "B"} & set(k)           # the file holds OHLCV only: nothing made up
    row = i3.loc[START + MIN]
    assert [k[f] for f in "ohlcv"] == [f"{row[c]:.8f}" for c in OHLCV]
    assert parse_binance(msg) == Kline((START + MIN).value, *row[OHLCV], None, True, "BTCUSDT", (START + MIN).value + 59_999_000_000)
    assert parse_binance(msg["data"]) == parse_binance(msg)                               # raw stream
    # Binance's documented layout with every field (hand-made numbers): n is read, f/L/q/V/Q/B are not needed
    full = {**msg["data"], "k": {**k, "f": 100, "L": 200, "n": 101, "q": "1.0", "V": "0.5", "Q": "0.5", "B": "0", "x": False}}
    ev = parse_binance(full)
    assert (ev.n_trades, ev.closed) == (101, False)
    for field, bad in [("o", "abc"), ("i", "5m"), ("x", "yes"), ("n", "many")]:
        with pytest.raises(DataValidationError, match=f"column 'k.{field}'"):
            parse_binance({**msg["data"], "k": {**k, field: bad}})
    with pytest.raises(DataValidationError, match="missing field.*column 'k.c'"):
        parse_binance({**msg["data"], "k": {f: v for f, v in k.items() if f != "c"}})
    rest = srv.klines(None, None, 2)                  # nothing played: the two bars before the start
    assert [r[0] for r in rest] == [(START - 2 * MIN).value // 1_000_000, (START - MIN).value // 1_000_000]
    assert klines_from_rest(rest, "BTCUSDT")[-1] == Kline((START - MIN).value, *i3.loc[START - MIN, OHLCV], None, True,
                                                          "BTCUSDT", START.value - 1_000_000)
    with pytest.raises(DataValidationError, match="column 'close_time', row 2"):
        klines_from_rest([rest[0], rest[1][:6]], "BTCUSDT")


def test_kline_replay_with_warmup_scores_every_bar(i3_path, i3):
    "Warm-up over REST, then every replayed bar is scored; bars and feature rows equal the file's, bit for bit."
    from volnb.intraday import SPIKE_FEATURES, OnlineFeatures, bar_features
    end = START + 40 * MIN
    scored, seen = {}, []

    def score(bar, feats):                                          # the score callback: once per bar
        assert bar["timestamp"] not in scored
        scored[bar["timestamp"]] = feats

    async def main():
        async with ReplayServer(i3_path, start=START, end=end) as srv:    # the real file, read by the server
            feed = FeedClient.replay(srv, backoff=0.01, seed=0)
            assert feed.mode == "kline" and feed.url.endswith("/stream?streams=btcusdt@kline_1m")
            online = OnlineFeatures()
            stats = await run_live(feed, online, score, on_bar=seen.append, warmup=61)
            return stats, online
    stats, online = asyncio.run(main())
    replayed = i3.loc[START:end - MIN]
    assert len(replayed) == 40
    same_bars(bars_frame(seen), replayed)
    assert list(scored) == list(replayed.index)                      # a score for the first streamed bar on
    live = pd.DataFrame.from_dict(scored, orient="index")[SPIKE_FEATURES]
    ref = bar_features(i3)[SPIKE_FEATURES].loc[replayed.index]
    np.testing.assert_array_equal(live.to_numpy(), ref.to_numpy())
    assert not np.isnan(live.to_numpy()).any()
    assert (stats["warmup_bars"], stats["bars_out"], stats["gaps"], stats["duplicates"], stats["warmup_overlap"]) == (61, 40, 0, 0, 0)
    assert bars_frame(seen).n_trades.isna().all()                   # the file has no trade counts
    assert online.resets == 0


def test_kline_warmup_returns_the_bars_before_the_start(i3):
    async def main():
        async with ReplayServer(i3, start=START, end=START + 5 * MIN) as srv:
            feed = FeedClient.replay(srv)
            assert await feed.server_time_ms() == START.value // 1_000_000
            return await feed.warmup(61), await FeedClient.replay(srv).warmup(1500)
    warm, long = asyncio.run(main())
    same_bars(bars_frame(warm), i3.loc[START - 61 * MIN:START - MIN])
    same_bars(bars_frame(long), i3.loc[START - 1500 * MIN:START - MIN])   # paged: 1,000 a request
    assert not bars_frame(warm).incomplete.any()


def test_kline_drops_reconnect_backfill_no_lost_or_duplicated_bar(i3):
    "Two outages of 5 bars, then one that repeats 3 bars: the bars are the file's, each once."
    sl = i3.loc[START - 61 * MIN:START + 59 * MIN]
    live, st, srv = kline_replay(sl, start=START, drop_after=[10, 25], missed_on_drop=5)
    same_bars(live, sl.loc[START:])
    assert srv.drops == 2 and st["reconnects"] == 2 and st["gaps"] == 2
    assert st["missing"] >= 10 and st["backfilled"] == st["missing"] and st["unfilled"] == 0 and st["duplicates"] == 0
    assert not live.incomplete.any()
    live, st, srv = kline_replay(sl, start=START, drop_after=30, missed_on_drop=-3)
    same_bars(live, sl.loc[START:])
    assert st["reconnects"] == 1 and st["gaps"] == 0 and st["duplicates"] >= 1


def test_kline_drop_at_speed_backfills_what_the_clock_passed(i3):
    "At 1,200× (a bar every 50 ms) the outage is wall-clock time; REST serves only the bars the clock has passed."
    sl = i3.loc[START - 5 * MIN:START + 29 * MIN]
    live, st, srv = kline_replay(sl, start=START, speed=1200.0, drop_after=8,
                                client_kw={"backoff": 0.2, "backoff_max": 0.2, "jitter": 0})
    same_bars(live, sl.loc[START:])
    assert st["reconnects"] == 1 and st["gaps"] == 1 and st["backfilled"] == st["missing"] >= 4 and st["duplicates"] == 0


def test_rest_klines_never_return_bars_after_the_replay_position(i3):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    sl = i3.loc[START - 100 * MIN:START + 49 * MIN]

    async def main():
        async with ReplayServer(sl, start=START, drop_after=12) as srv:
            url = f"{srv.rest_url}/api/v3/klines"
            get = lambda path="/api/v3/klines", **p: asyncio.to_thread(requests.get, srv.rest_url + path, params=p, timeout=5)
            out = {"before": await get(symbol="BTCUSDT", interval="1m", startTime=START.value // 1_000_000 - 120_000),
                   "latest": await get(symbol="BTCUSDT", interval="1m", limit=3),
                   "time0": await get("/api/v3/time")}
            got = []
            async with connect(srv.url, close_timeout=0.1) as ws:
                try:
                    async for raw in ws: got.append(json.loads(raw))
                except ConnectionClosed: pass
            out["after"] = await get(symbol="BTCUSDT", interval="1m", startTime=START.value // 1_000_000, limit=1000)
            out["upto"] = await get(symbol="BTCUSDT", interval="1m", endTime=(START + 40 * MIN).value // 1_000_000, limit=5)
            out["time1"] = await get("/api/v3/time")
            out["bad"] = [await get(symbol="ETHUSDT", interval="1m"), await get(symbol="BTCUSDT", interval="5m"),
                          await get(symbol="BTCUSDT", interval="1m", limit=5000), await get(symbol="BTCUSDT", interval="1m", startTime="x"),
                          await get("/api/v3/historicalTrades", symbol="BTCUSDT")]
            return out, got, srv
    out, got, srv = asyncio.run(main())
    ms = lambda t: t.value // 1_000_000
    assert out["time0"].json() == {"serverTime": ms(START)}
    before = out["before"].json()
    assert [r[0] for r in before] == [ms(START - 2 * MIN), ms(START - MIN)]      # nothing from the replay yet
    assert before[-1] == [ms(START - MIN), *(f"{v:.8f}" for v in i3.loc[START - MIN, OHLCV]), ms(START) - 1,
                          None, None, None, None, None]
    assert [r[0] for r in out["latest"].json()] == [ms(START - 3 * MIN), ms(START - 2 * MIN), ms(START - MIN)]
    # the server played 12 bars and dropped the connection: REST has those 12 and nothing after
    assert srv.sent == 12 and len(got) <= 12
    after = out["after"].json()
    assert [r[0] for r in after] == [ms(START + i * MIN) for i in range(12)]
    assert [m["data"]["k"]["t"] for m in got] == [r[0] for r in after[:len(got)]]      # what the client saw is in REST
    assert [r[0] for r in out["upto"].json()] == [ms(START + i * MIN) for i in range(7, 12)]
    assert out["time1"].json()["serverTime"] == ms(START + 12 * MIN) > after[-1][6]
    codes = [r.json().get("code") if r.status_code == 400 else r.status_code for r in out["bad"]]
    assert codes == [-1121, -1120, -1100, -1100, 404]


def test_kline_replay_across_the_real_halt_gives_holes(intraday):
    "2023-03-24: the I2 file lacks 80 minutes (the Binance spot halt); REST cannot give them back: 80 hole bars."
    from volnb.data import load_minute_bars
    i2 = load_minute_bars(intraday / "btcusdt_1m_binance_spot_freqtrade_2023-03-16_2023-05-01.json.gz")
    a, b = pd.Timestamp("2023-03-24 12:30", tz="UTC"), pd.Timestamp("2023-03-24 14:10", tz="UTC")
    live, st, _ = kline_replay(i2.loc[a - 10 * MIN:b], start=a)
    assert len(live) == 101 and list(live.index) == list(pd.date_range(a, b, freq="min"))
    holes = live[live.incomplete]
    assert len(holes) == 80 and holes.index[0] == pd.Timestamp("2023-03-24 12:40", tz="UTC") and holes[OHLCV].isna().all().all()
    same_bars(live[~live.incomplete], i2.loc[a:b])
    assert (st["gaps"], st["missing"], st["backfilled"], st["unfilled"]) == (1, 80, 0, 80)
    # the zero-volume flat bars before the halt are played as they are, and the feature code treats them as holes
    flat = live.loc[:"2023-03-24 12:39"]
    assert (flat.volume == 0).all() and all(feature_input(r)["stale"] for r in flat.reset_index().to_dict("records"))


def test_run_live_takes_warmup_bars_from_a_frame(i3):
    "Warm-up bars given as a frame (the file's own bars); one overlapping the stream is skipped, not scored twice."
    from volnb.intraday import SPIKE_FEATURES, OnlineFeatures, bar_features
    scored = {}

    async def main():
        async with ReplayServer(i3.loc[START - 61 * MIN:START + 9 * MIN], start=START, end=START + 10 * MIN) as srv:
            feed = FeedClient.replay(srv)
            return await run_live(feed, OnlineFeatures(), lambda bar, f: scored.__setitem__(bar["timestamp"], f),
                                  warmup=i3.loc[START - 60 * MIN:START])     # 61 bars, the last one = the first streamed
    stats = asyncio.run(main())
    assert list(scored) == list(pd.date_range(START + MIN, START + 9 * MIN, freq="min"))
    assert stats["warmup_bars"] == 61 and stats["duplicates"] + stats["warmup_overlap"] == 1
    live = pd.DataFrame.from_dict(scored, orient="index")[SPIKE_FEATURES]
    np.testing.assert_array_equal(live.to_numpy(), bar_features(i3)[SPIKE_FEATURES].loc[live.index].to_numpy())


def test_kline_client_defaults_and_bad_arguments(i3, spot):
    feed = FeedClient("binance", stream="kline")
    assert feed.url == "wss://stream.binance.com:9443/stream?streams=btcusdt@kline_1m"
    assert feed.rest_url == "https://api.binance.com" and isinstance(feed.stream, KlineStream)
    assert FeedClient("binance").url.endswith("btcusdt@trade/btcusdt@bookTicker")
    with pytest.raises(ValueError, match="Binance"):
        FeedClient("coinbase", stream="kline")
    with pytest.raises(ValueError, match="unknown stream"):
        FeedClient("binance", stream="candles")
    with pytest.raises(FeedError, match="REST endpoint"):
        asyncio.run(FeedClient("binance", stream="kline", rest_url=None).warmup())
    with pytest.raises(DataValidationError, match="no bar to replay"):
        ReplayServer(i3, start="2030-01-01")
    with pytest.raises(ValueError, match="start/end"):
        ReplayServer(spot[0], start=START)
    srv = ReplayServer(i3.iloc[:100])                        # default: the first 61 bars are history
    assert srv.bars.index[0] == i3.index[61] and len(srv) == 39 and srv.kind == "kline"
    # a kline on a trade stream and a trade on a kline stream are ignored, not mistaken
    assert BarStream("BTCUSDT").push(Kline(0, 1.0, 1.0, 1.0, 1.0, 1.0, None, True, "BTCUSDT")) == ()
    ks = KlineStream("BTCUSDT")
    assert ks.push(Trade(0, 1.0, 1.0, "buy", 1, "BTCUSDT")) == () and ks.other_events == 1


# ------------------------------------------------------------------------------------------ REST retries
class ScriptedHttp:
    "A loopback HTTP server that answers GETs from a script of (status, headers, JSON body), then repeats the last."
    def __init__(self, script):
        import http.server
        import threading
        self.script, self.paths = list(script), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                status, headers, body = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items(): self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a): pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_rest_retries_cap_retry_after_and_jitter_the_backoff():
    "A Retry-After of a day waits retry_after_max; other retries wait backoff·2^attempt less up to half of it."
    import random
    from volnb.feeds import RetryClient
    busy = {"code": -1003, "msg": "Too many requests"}
    script = [(429, {"Retry-After": "86400"}, busy), (503, {}, busy), (502, {}, busy), (200, {}, {"serverTime": 42})]
    with ScriptedHttp(script) as srv:
        sleeps = []
        c = RetryClient(retries=3, backoff=0.5, backoff_max=4.0, jitter=0.5, retry_after_max=2.0, rng=random.Random(1),
                        sleep=sleeps.append)
        assert c.get_json(f"{srv.url}/api/v3/time") == {"serverTime": 42}
    assert len(srv.paths) == 4 and sleeps[0] == 2.0
    assert 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0            # attempts 1 and 2: (d/2, d]
    # the jitter spreads clients: 500 draws of one attempt cover most of (d/2, d]; a seeded RNG repeats its draws
    many = [c.wait_for(3) for _ in range(500)]
    assert 2.0 <= min(many) < 2.2 and 3.8 < max(many) <= 4.0
    seeded = lambda: RetryClient(backoff=0.5, backoff_max=4.0, rng=random.Random(7))
    a, b = seeded(), seeded()
    assert [a.wait_for(k) for k in range(5)] == [b.wait_for(k) for k in range(5)]
    for x in (c, a, b): x.close()


def test_feed_rest_calls_use_the_feeds_jittered_retries():
    "The feed's warm-up/backfill client: the feed's RNG and jitter, Retry-After capped at the feed's backoff_max."
    from volnb.feeds import RetryClient
    busy = {"code": -1003, "msg": "Too many requests"}
    script = [(429, {"Retry-After": "3600"}, busy), (503, {}, busy), (200, {}, {"serverTime": 1_723_161_600_000})]
    with ScriptedHttp(script) as srv:
        feed = FeedClient("binance", rest_url=srv.url, backoff_max=0.05, jitter=0.5, seed=3)
        c = feed._client()
        sleeps = []
        c.sleep = sleeps.append
        assert asyncio.run(feed.server_time_ms()) == 1_723_161_600_000
    assert isinstance(c, RetryClient) and c.rng is feed._rng and c.jitter == 0.5
    assert sleeps[0] == 0.05 and 0.2 <= sleeps[1] <= 0.4                   # capped Retry-After; attempt 1 of backoff 0.2
    same = FeedClient("binance", backoff_max=0.05, seed=3)._client()
    other = FeedClient("binance", backoff_max=0.05, seed=4)._client()
    a, b = [same.wait_for(2) for _ in range(5)], [other.wait_for(2) for _ in range(5)]
    assert a != b and all(0.4 <= x <= 0.8 for x in a + b)


# ------------------------------------------------------------------------------------------ fault injection

def test_parse_faults_round_trips_and_names_the_bad_item(spot):
    f = parse_faults(" drop_every=500, pause_every=300:2.5,restart_after=1000:1 ")
    assert f == ReplayFaults(drop_every=500, pause_every=300, pause_s=2.5, restart_after=1000, restart_s=1.0)
    assert str(f) == "drop_every=500,pause_every=300:2.5,restart_after=1000:1" and parse_faults(str(f)) == f
    assert parse_faults("pause_every=7") == ReplayFaults(pause_every=7, pause_s=5.0)          # default seconds
    assert parse_faults("restart_after=3:0.125").restart_s == 0.125
    assert parse_faults("") == parse_faults(None) == ReplayFaults() and not ReplayFaults() and f
    for text, named in [("drop_evry=5", "unknown fault 'drop_evry'"), ("drop_every=0", "drop_every must be a positive"),
                        ("drop_every=1.5", "drop_every='1.5'"), ("drop_every", "drop_every needs a value"),
                        ("drop_every=5:1", "drop_every takes no seconds"), ("pause_every=3:soon", "pause_every='3:soon'"),
                        ("pause_every=3:nan", "pause_s must be"), ("restart_after=10:-1", "restart_s must be"),
                        ("drop_every=5,drop_every=6", "drop_every given twice")]:
        with pytest.raises(ValueError, match=named):
            parse_faults(text)
    with pytest.raises(ValueError, match="forever"):                      # each drop would go back further than it got
        ReplayServer(spot[0], faults=ReplayFaults(drop_every=100), missed_on_drop=-100)
    with pytest.raises(TypeError, match="ReplayFaults"):
        ReplayServer(spot[0], faults={"drop_every": 5})


def test_drop_every_n_messages_reconnects_and_loses_no_trade(spot, batch0):
    "drop_every=8,000 with 300 recorded lines passing in each outage: 4 drops, 4 gaps backfilled, every trade once."
    live, feed, srv = replay(spot[0], faults=parse_faults("drop_every=8000"), missed_on_drop=300,
                             client_kw={"max_reconnects": 20})
    st = feed.stats
    assert srv.injected == {"drops": 4, "pauses": 0, "restarts": 0} and 32_000 <= srv.sent < 9_757 + 28_040
    assert st["reconnects"] == 4 and st["connections"] == 5 and st["gaps"] == 4
    assert st["backfilled"] == st["missing"] > 0 and st["unfilled"] == 0 and (st["duplicates"], st["late"]) == (0, 0)
    pd.testing.assert_frame_equal(live[TRADE_COLS], batch0[TRADE_COLS])


def test_kline_drop_every_n_bars_gives_every_bar_once(i3):
    "A drop after every 7th kline with 2 bars played during each outage: 6 drops, the file's bars, each once."
    sl = i3.loc[START - 61 * MIN:START + 59 * MIN]
    live, st, srv = kline_replay(sl, start=START, missed_on_drop=2, faults=ReplayFaults(drop_every=7),
                                client_kw={"max_reconnects": 20})
    same_bars(live, sl.loc[START:])
    assert srv.drops == 6 and srv.sent == 48 and st["reconnects"] == 6          # 60 bars = 6 × (7 sent + 2 missed) + 6
    assert st["missing"] >= 12 and st["backfilled"] == st["missing"] and (st["unfilled"], st["duplicates"]) == (0, 0)
    assert not live.incomplete.any()


def test_replay_client_status_shows_the_servers_faults(i3):
    "What a service's /live shows of a replay (volnb.api.feed_status): the client's reconnects, the server's faults."
    from volnb.api import feed_status

    async def main():
        async with ReplayServer(i3.loc[START - 61 * MIN:START + 19 * MIN], start=START, faults="drop_every=6") as srv:
            feed = FeedClient.replay(srv, backoff=0.01, backoff_max=0.05, seed=0)
            n = len([b async for b in feed.bars()])
            return n, feed
    n, feed = asyncio.run(main())
    status = json.loads(json.dumps(feed_status(feed)))                      # JSON-safe, as /live sends it
    assert n == 20 and status["reconnects"] == 3 and status["duplicates"] == 0  # drops after kline 6, 12 and 18
    assert status["replay"]["faults"] == "drop_every=6" and status["replay"]["sent"] == 20
    assert status["replay"]["injected"] == {"drops": 3, "pauses": 0, "restarts": 0}
    assert "replay" not in FeedClient("binance", stream="kline").status()     # a live client has no replay part


def test_replay_history_bars_sets_the_default_start(i3):
    "Without a start, a bar file keeps history_bars bars as history: HISTORY_BARS (61) unless given."
    from volnb.intraday import HISTORY_BARS
    assert ReplayServer(i3.iloc[:100]).bars.index[0] == i3.index[HISTORY_BARS]
    srv = ReplayServer(i3.iloc[:100], history_bars=6)
    assert srv.bars.index[0] == i3.index[6] and len(srv) == 94
    with pytest.raises(ValueError, match="history_bars must be a whole number"):
        ReplayServer(i3.iloc[:100], history_bars=-1)


def test_pause_longer_than_the_watchdog_makes_the_client_reconnect(spot, batch0):
    "A 2-second silence on an open connection: a client with stale_after=0.5 s reconnects; one with 60 s waits."
    live, feed, srv = replay(spot[0], faults=parse_faults("pause_every=20000:2"), client_kw={"stale_after": 0.5, "max_reconnects": 20})
    st = feed.stats
    assert srv.injected == {"drops": 0, "pauses": 1, "restarts": 0} and srv.sent == 9_757 + 28_040
    assert st["reconnects"] >= 1 and any("no message for 0.5 s" in e for e in feed.errors)
    assert st["backfilled"] == st["missing"] and (st["duplicates"], st["late"]) == (0, 0)
    pd.testing.assert_frame_equal(live[TRADE_COLS], batch0[TRADE_COLS])
    live, feed, srv = replay(spot[0], faults=parse_faults("pause_every=20000:0.3"))    # stale_after 60 s: no reconnect
    assert srv.pauses == 1 and feed.stats["reconnects"] == 0 and feed.stats["connections"] == 1
    pd.testing.assert_frame_equal(live, batch0)


def test_restart_on_the_same_port_is_survived(spot, batch0):
    "The server stops after 15,000 messages (1012), refuses connects for 0.5 s, then listens on the same port again."
    live, feed, srv = replay(spot[0], faults=ReplayFaults(restart_after=15_000, restart_s=0.5),
                             client_kw={"max_reconnects": 100})      # bounded: ~2.5 s of refused connects
    st = feed.stats
    assert srv.injected == {"drops": 0, "pauses": 0, "restarts": 1} and srv.restart_error is None
    assert feed.url == srv.url and srv.connections == st["connections"] == 2       # the same URL before and after
    assert st["reconnects"] >= 2                                                  # refused while the server was away
    assert any("1012" in e for e in feed.errors) and any(e.startswith("connect ws://127.0.0.1") for e in feed.errors)
    assert st["backfilled"] == st["missing"] and (st["duplicates"], st["late"], st["unfilled"]) == (0, 0, 0)
    pd.testing.assert_frame_equal(live[TRADE_COLS], batch0[TRADE_COLS])
