"""The MT5-true order path: filling mode discovery, retcode handling with bounded retries,
and idempotent client order ids.

**Client order id.** Every order carries ``magic`` (the engine) and a ``comment`` that is a
deterministic id of (account login, magic, symbol, bar close, intent) — e.g. ``tx-3QJ7…``.
The intent names *what* the order is for (``open:buy``, ``close:<ticket>``), never *how much*,
so the id of a bar's order is the same after a restart. Before sending an id that was
journaled before (a restart, a re-decided bar), and before every retry after an ambiguous
answer, the executor looks for that comment among the terminal's positions, deals and (where
the terminal has it) pending orders; found means the order already reached the broker, and it
is *not* sent again. An id never journaled was never sent (write-ahead), so it is not looked up.

**Write-ahead.** The intent is journaled (status ``pending``) before ``order_send`` and its
outcome after; a crash in between leaves a pending intent that
:meth:`engine.loop.Engine.reconcile` resolves on the next start. An intent sent again (its
order was not found at the broker) is reset to ``pending`` first, so any number of crashes
leaves it reconcilable.

**One synchronous commit per bar.** The bar's intents may be journaled together up front
(:meth:`OrderExecutor.prepare`, as the engine does for a flip: close, then open): the first
send's commit point makes all of them durable, and a later send of the bar whose intent is
durable already needs no flush of its own (:meth:`engine.journal.Journal.checkpoint`). An
intent prepared but never sent (an earlier order of the bar failed) is ended ``failed``
(:meth:`OrderExecutor.abandon`); one left ``pending`` by a crash, or by a failure that rolls
the bar back after its commit point, is resolved against the broker by reconciliation like
any other (``not_sent`` when its order is not there).

**Kill.** Immediately before every ``order_send``, under the engine's send gate, the executor
asks ``may_send()`` (no kill acknowledged, journal writable); when it says no the order is not
sent (``killed``). Only the kill's own flatten orders pass.

**Filling mode.** Candidates come from ``symbol_info().filling_mode`` flags
(``SYMBOL_FILLING_FOK`` → ``ORDER_FILLING_FOK``, ``SYMBOL_FILLING_IOC`` → ``IOC``), in the
configured preference, then ``RETURN``. A mode answered with 10030 (INVALID_FILL) is
blacklisted for the symbol and the next one is tried at once; the mode that worked is cached.
Both survive restarts (journal state), so a 10030 never reaches the broker twice.

**Retcodes** (``RETCODE_ACTIONS``; retries are bounded by ``ExecutionConfig.max_retries``,
with linear backoff):

======  ===================  =============================================================
10009   DONE                 success
10008   PLACED               success (order placed)
10010   DONE_PARTIAL         success for the filled part; the rest is re-decided next bar
10004   REQUOTE              retry with a fresh tick
10020   PRICE_CHANGED        retry with a fresh tick
10021   PRICE_OFF            no prices: retry with a fresh tick; refuse ``no_prices`` at the end
10006   REJECT               retry after backoff
10031   CONNECTION           ambiguous: look the client id up, retry only if not found
10012   TIMEOUT              ambiguous: look the client id up, retry only if not found
(None)  order_send → None    ambiguous (IPC failure): as CONNECTION
10030   INVALID_FILL         blacklist the mode, retry at once with the next mode
10016   INVALID_STOPS        re-read stops/freeze level, widen SL/TP beyond it, retry once
10018   MARKET_CLOSED        no retry: refuse ``market_closed``
10019   NO_MONEY             no retry: refuse ``no_money`` (the engine goes REDUCING)
10036   POSITION_CLOSED      close intents: done (nothing left to close); else failure
other                        no retry: ``order_failed``
======  ===================  =============================================================
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.config import ExecutionConfig
from engine.journal import Fill, Intent, Journal
from engine.mt5 import protocol as mt5
from engine.risk import Reason
from engine.sizing import min_stop_distance, return_volatility

log = logging.getLogger(__name__)

TRADE_RETCODE_PLACED = 10008
TRADE_RETCODE_DONE_PARTIAL = 10010
TRADE_RETCODE_TIMEOUT = 10012

DONE = frozenset({mt5.TRADE_RETCODE_DONE, TRADE_RETCODE_PLACED, TRADE_RETCODE_DONE_PARTIAL})
RETRY_FRESH_PRICE = frozenset(
    {
        mt5.TRADE_RETCODE_REQUOTE,
        mt5.TRADE_RETCODE_PRICE_CHANGED,
        mt5.TRADE_RETCODE_PRICE_OFF,
        mt5.TRADE_RETCODE_REJECT,
    }
)
AMBIGUOUS = frozenset({mt5.TRADE_RETCODE_CONNECTION, TRADE_RETCODE_TIMEOUT})
FINAL = {
    mt5.TRADE_RETCODE_MARKET_CLOSED: Reason.MARKET_CLOSED,
    mt5.TRADE_RETCODE_NO_MONEY: Reason.NO_MONEY,
}
RETCODE_ACTIONS: dict[int, str] = {
    mt5.TRADE_RETCODE_DONE: "success",
    TRADE_RETCODE_PLACED: "success",
    TRADE_RETCODE_DONE_PARTIAL: "success (partial; the rest is re-decided next bar)",
    mt5.TRADE_RETCODE_REQUOTE: "retry with a fresh tick",
    mt5.TRADE_RETCODE_PRICE_CHANGED: "retry with a fresh tick",
    mt5.TRADE_RETCODE_PRICE_OFF: "retry with a fresh tick; refuse no_prices when exhausted",
    mt5.TRADE_RETCODE_REJECT: "retry after backoff",
    mt5.TRADE_RETCODE_CONNECTION: "look the client id up; retry only if not found",
    TRADE_RETCODE_TIMEOUT: "look the client id up; retry only if not found",
    mt5.TRADE_RETCODE_INVALID_FILL: "blacklist the filling mode; retry at once with the next",
    mt5.TRADE_RETCODE_INVALID_STOPS: "widen SL/TP beyond stops/freeze level; retry once",
    mt5.TRADE_RETCODE_MARKET_CLOSED: "no retry: market_closed",
    mt5.TRADE_RETCODE_NO_MONEY: "no retry: no_money (engine goes REDUCING)",
    mt5.TRADE_RETCODE_POSITION_CLOSED: "close intents: done; else order_failed",
}
_FILLING = {
    "FOK": mt5.ORDER_FILLING_FOK,
    "IOC": mt5.ORDER_FILLING_IOC,
    "RETURN": mt5.ORDER_FILLING_RETURN,
}
_FLAG = {"FOK": mt5.SYMBOL_FILLING_FOK, "IOC": mt5.SYMBOL_FILLING_IOC}


FILL_VOL_WINDOW = 24
"""One-bar returns in the volatility a fill is journaled with (the cost formula's window)."""


def venue_name(terminal: Any, login: int) -> str:
    """``<mode>:<login>`` of a terminal: ``sim:50000001``, ``bridge:123456``, ``native:…``.
    Read from the class (``venue_kind``) and the instance's own ``name`` (a
    :class:`~engine.mt5.resilient.ResilientTerminal` is ``mt5-<mode>``), never through a
    wrapper's forwarding ``__getattr__`` (which would ask the remote terminal)."""
    kind = getattr(type(terminal), "venue_kind", None)
    if not isinstance(kind, str):
        name = str(getattr(terminal, "__dict__", {}).get("name", "") or "")
        low = type(terminal).__name__.lower()
        kind = name[4:] if name.startswith("mt5-") else (low.removesuffix("terminal") or low)
    return f"{kind}:{int(login)}"


def client_order_id(login: int, magic: int, symbol: str, bar_close: int, intent: str) -> str:
    """Deterministic id (fits MT5's 31-char comment): same inputs, same id, across restarts."""
    digest = hashlib.sha256(f"{login}|{magic}|{symbol}|{int(bar_close)}|{intent}".encode()).digest()
    return "tx-" + base64.b32encode(digest[:10]).decode().rstrip("=")


@dataclass
class OrderOutcome:
    """What happened to one intent."""

    client_id: str
    symbol: str
    bar_close: int
    intent: str
    status: str  # done | recovered | failed
    retcode: int | None = None
    reason: Reason | None = None
    detail: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The order is at the broker (sent now, or found from an earlier attempt)."""
        return self.status in ("done", "recovered")


@dataclass
class PreparedIntent:
    """An intent journaled before its order is sent (:meth:`OrderExecutor.prepare`)."""

    client_id: str
    symbol: str
    bar_close: int
    intent: str
    base: dict[str, Any]  # the request without price, filling mode and stops
    new: bool  # journaled now; False: the id is from an earlier attempt (look it up first)


def _result_dict(res: Any) -> dict[str, Any]:
    d = res._asdict() if hasattr(res, "_asdict") else dict(res)
    d.pop("request", None)
    return {
        k: (v if isinstance(v, int | float | str | bool) or v is None else str(v))
        for k, v in d.items()
    }


class OrderExecutor:
    """Sends one intent's market order the MT5 way (see the module docstring)."""

    def __init__(
        self,
        terminal: Any,
        journal: Journal,
        config: ExecutionConfig,
        *,
        magic: int,
        login: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        on_retcode: Callable[[int | None], None] | None = None,
        may_send: Callable[[], bool] = lambda: True,
        send_gate: threading.Lock | None = None,
        timeframe: int | None = None,
        venue: str | None = None,
        symbol_info: Callable[[str], Any] | None = None,
        closed_bars: Callable[[str, int], Any] | None = None,
    ) -> None:
        self.terminal = terminal
        # the engine's reads of the bar being decided (one symbol_info, one read of closed
        # bars per bar); without them, the terminal's
        self._info_source = symbol_info
        self._bars_source = closed_bars
        self.timeframe = timeframe  # bars of the fill's recent volatility (None: not journaled)
        self.venue = venue or venue_name(terminal, login)
        self.may_send = may_send
        self.send_gate = send_gate or threading.Lock()
        self.journal = journal
        self.config = config
        self.magic = magic
        self.login = login
        self.sleep = sleep
        self.on_retcode = on_retcode
        # seconds spent inside order_send so far: the broker's execution (a network round
        # trip on a real terminal), told apart from the engine's own time per bar
        self.broker_s = 0.0
        saved = journal.load_state("filling")
        d = json.loads(saved) if saved else {}
        self.working_fill: dict[str, int] = {k: int(v) for k, v in d.get("working", {}).items()}
        self.bad_fill: dict[str, set[int]] = {k: set(v) for k, v in d.get("bad", {}).items()}

    def _symbol_info(self, symbol: str) -> Any:
        if self._info_source is not None:
            return self._info_source(symbol)
        return self.terminal.symbol_info(symbol)

    def _closed_bars(self, symbol: str, timeframe: int, count: int) -> Any:
        if self._bars_source is not None:
            return self._bars_source(symbol, count)
        return self.terminal.copy_rates_from_pos(symbol, timeframe, 1, count)

    # --- filling ------------------------------------------------------------------------
    def _save_fill(self) -> None:
        self.journal.save_state(
            "filling",
            json.dumps(
                {
                    "working": self.working_fill,
                    "bad": {k: sorted(v) for k, v in self.bad_fill.items()},
                }
            ),
        )

    def filling_candidates(self, symbol: str) -> list[int]:
        """Filling modes to try, best first: the cached working one, then the symbol's flags
        in preference order, then RETURN; never one that answered 10030 before."""
        bad = self.bad_fill.get(symbol, set())
        if symbol in self.working_fill and self.working_fill[symbol] not in bad:
            first = [self.working_fill[symbol]]
        else:
            first = []
        info = self._symbol_info(symbol)
        flags = int(info.filling_mode) if info is not None else 0
        out = list(first)
        for name in self.config.filling_preference:
            mode = _FILLING[name]
            if name in _FLAG and not flags & _FLAG[name]:
                continue
            if mode not in out and mode not in bad:
                out.append(mode)
        if mt5.ORDER_FILLING_RETURN not in out and mt5.ORDER_FILLING_RETURN not in bad:
            out.append(mt5.ORDER_FILLING_RETURN)
        return out

    # --- lookup -------------------------------------------------------------------------
    def find_existing(self, symbol: str, client_id: str, now_utc: float) -> dict[str, Any] | None:
        """The broker's trace of an order with this client id: a position, deal or order."""
        for p in self.terminal.positions_get(symbol=symbol) or ():
            if p.magic == self.magic and p.comment == client_id:
                return {
                    "found": "position",
                    "ticket": int(p.ticket),
                    "volume": float(p.volume),
                    "price": float(p.price_open),
                }
        lo = int(now_utc) - self.config.history_lookback_s
        hi = int(now_utc) + 2 * 86_400  # server time is ahead of UTC by the broker offset
        for d in self.terminal.history_deals_get(lo, hi) or ():
            if d.magic == self.magic and d.comment == client_id and d.symbol == symbol:
                return {
                    "found": "deal",
                    "deal": int(d.ticket),
                    "order": int(d.order),
                    "volume": float(d.volume),
                    "price": float(d.price),
                }
        orders_get = getattr(self.terminal, "orders_get", None)
        if orders_get is not None:
            for o in orders_get(symbol=symbol) or ():
                if (
                    getattr(o, "magic", None) == self.magic
                    and getattr(o, "comment", None) == client_id
                ):
                    return {"found": "order", "order": int(o.ticket)}
        return None

    # --- sending ------------------------------------------------------------------------
    def execute(
        self,
        symbol: str,
        bar_close: int,
        intent: str,
        *,
        order_type: int,
        volume: float,
        now_utc: float,
        position: int | None = None,
        sl_distance: float = 0.0,
        tp_distance: float = 0.0,
        flatten: bool = False,
        prepared: PreparedIntent | None = None,
    ) -> OrderOutcome:
        """Get one intent's order to the broker exactly once, or fail with a reason
        (``flatten``: the kill's own closing order, sent although the kill is set;
        ``prepared``: its intent, journaled already by :meth:`prepare` with these arguments)."""
        if prepared is None:
            prepared = self.prepare(
                symbol, bar_close, intent, order_type=order_type, volume=volume, position=position
            )
        cid, base = prepared.client_id, prepared.base
        out = OrderOutcome(cid, symbol, int(bar_close), intent, "failed")
        # Write-ahead: an id never journaled was never sent, so a new intent needs no look-up
        # at the broker (the scan of days of deals was the order path's largest cost). An id
        # journaled before (a restart, a re-decided bar) is looked up and sent only if absent.
        if not prepared.new:
            found = self.find_existing(symbol, cid, now_utc)
            if found is not None:
                log.warning(
                    "%s %s already at the broker (%s): not sending again", symbol, cid, found
                )
                out.status, out.results = "recovered", [found]
                self._end(out)
                return out
            log.info(
                "intent %s exists (restart); its order was not found at the broker: sending", cid
            )
            self.journal.intent_reset(cid, dict(base))
        modes = self.filling_candidates(symbol)
        retries = 0
        widened = False
        while True:
            if not modes:
                out.reason, out.detail = Reason.ORDER_FAILED, "no filling mode left to try"
                break
            req = dict(base)
            req["type_filling"] = modes[0]
            tick = self.terminal.symbol_info_tick(symbol)
            if tick is not None:
                req["price"] = float(tick.ask if order_type == mt5.ORDER_TYPE_BUY else tick.bid)
            if position is None and (sl_distance > 0 or tp_distance > 0):
                self._stops(req, symbol, tick, sl_distance, tp_distance, widen=widened)
            out.requests.append(req)
            # write-ahead: the intent is durable before the send (a flush only if it is not
            # yet: a bar's intents prepared together share the first send's)
            self.journal.checkpoint()
            with self.send_gate:
                allowed = flatten or self.may_send()
                res = None
                if allowed:
                    t_send = time.perf_counter()
                    try:
                        res = self.terminal.order_send(req)
                    finally:
                        self.broker_s += time.perf_counter() - t_send
            if not allowed:
                out.reason, out.detail = Reason.KILLED, "kill acknowledged before order_send"
                out.requests.pop()
                break
            rc: int | None = int(res.retcode) if res is not None else None
            out.retcode = rc
            out.results.append(
                _result_dict(res)
                if res is not None
                else {"retcode": None, "last_error": list(self.terminal.last_error())}
            )
            if self.on_retcode is not None:
                self.on_retcode(rc)
            if rc in DONE:
                out.status = "done"
                if res is not None:
                    self._record_fill(out, req, tick, res, now_utc, attempts=len(out.requests))
                if self.working_fill.get(symbol) != req["type_filling"]:
                    self.working_fill[symbol] = req["type_filling"]
                    self._save_fill()
                break
            if rc == mt5.TRADE_RETCODE_INVALID_FILL:
                self.bad_fill.setdefault(symbol, set()).add(modes[0])
                if self.working_fill.get(symbol) == modes[0]:
                    del self.working_fill[symbol]
                self._save_fill()
                log.warning("%s: filling mode %d refused (10030); never again", symbol, modes[0])
                modes = modes[1:]
                continue
            if rc == mt5.TRADE_RETCODE_POSITION_CLOSED and position is not None:
                out.status, out.detail = "done", "position already closed"
                break
            if rc in FINAL:
                out.reason, out.detail = FINAL[rc], str(out.results[-1].get("comment", ""))
                break
            if rc == mt5.TRADE_RETCODE_INVALID_STOPS and not widened:
                widened = True
                retries += 1
                continue
            if rc is None or rc in AMBIGUOUS or rc in RETRY_FRESH_PRICE:
                if retries >= self.config.max_retries:
                    if rc is None or rc in AMBIGUOUS:  # the last answer was lost: look again
                        found = self.find_existing(symbol, cid, now_utc)
                        if found is not None:
                            out.status = "recovered"
                            out.results.append(found)
                            break
                    out.reason = (
                        Reason.NO_PRICES
                        if rc == mt5.TRADE_RETCODE_PRICE_OFF
                        else Reason.ORDER_FAILED
                    )
                    out.detail = f"retcode {rc} after {retries} retries"
                    break
                retries += 1
                self.sleep(self.config.retry_backoff_s * retries)
                if rc is None or rc in AMBIGUOUS:
                    found = self.find_existing(symbol, cid, now_utc)
                    if found is not None:
                        out.status = "recovered"
                        out.results.append(found)
                        break
                continue
            out.reason, out.detail = (
                Reason.ORDER_FAILED,
                f"retcode {rc}: {out.results[-1].get('comment', '')}",
            )
            break
        self._end(out)
        return out

    def _record_fill(
        self,
        out: OrderOutcome,
        req: dict[str, Any],
        tick: Any,
        res: Any,
        now_utc: float,
        *,
        attempts: int,
    ) -> None:
        """Journal the fill of ``req`` (inside the bar's transaction, right after the send).
        The order is at the broker already: a terminal read failing here (the point, the
        volatility's bars) leaves those fields NULL rather than failing the bar; a journal
        error raises as every journal write does."""
        buy = req["type"] == mt5.ORDER_TYPE_BUY
        point: float | None = None
        vol: float | None = None
        try:
            info = self._symbol_info(out.symbol)
            point = float(info.point) if info is not None and info.point else None
            if self.timeframe is not None:
                rates = self._closed_bars(out.symbol, self.timeframe, FILL_VOL_WINDOW + 1)
                if rates is not None:
                    vol = return_volatility(rates["close"], FILL_VOL_WINDOW)
        except Exception as exc:  # the fill is journaled without them
            log.warning("%s: fill context not read (%s): journaled without it", out.symbol, exc)
        asked = req.get("price")
        filled = float(res.price) if getattr(res, "price", 0) else None
        slip = None
        if asked is not None and filled is not None:
            slip = (filled - asked) if buy else (asked - filled)  # adverse positive
        spread = float(tick.ask - tick.bid) if tick is not None else None
        ref = asked if asked is not None else filled

        def pts(x: float | None) -> float | None:
            return round(x / point, 4) if x is not None and point else None

        vol_price = vol * ref if vol is not None and ref is not None else None
        self.journal.record_fill(
            Fill(
                client_id=out.client_id,
                symbol=out.symbol,
                bar_close=out.bar_close,
                intent=out.intent,
                venue=self.venue,
                side="buy" if buy else "sell",
                volume=float(getattr(res, "volume", 0) or req["volume"]),
                filled_at=float(now_utc),
                hour_utc=int(now_utc // 3600) % 24,
                requested_price=asked,
                filled_price=filled,
                slippage_price=slip,
                slippage_points=pts(slip),
                spread_price=spread,
                spread_points=pts(spread),
                volatility=vol,
                volatility_points=pts(vol_price),
                retcode=int(res.retcode),
                deal=int(getattr(res, "deal", 0) or 0) or None,
                order_ticket=int(getattr(res, "order", 0) or 0) or None,
                attempts=attempts,
            )
        )

    def _stops(
        self, req: dict[str, Any], symbol: str, tick: Any, sl_d: float, tp_d: float, *, widen: bool
    ) -> None:
        from engine.sizing import stop_prices

        info = self._symbol_info(symbol)
        if info is None or tick is None:
            return
        if widen:  # 10016: step beyond the stops/freeze level by the spread as well
            extra = min_stop_distance(
                info.trade_stops_level, info.trade_freeze_level, info.point
            ) + (tick.ask - tick.bid)
            sl_d = sl_d + extra if sl_d > 0 else 0.0
            tp_d = tp_d + extra if tp_d > 0 else 0.0
        sl, tp = stop_prices(
            req["type"] == mt5.ORDER_TYPE_BUY,
            bid=tick.bid,
            ask=tick.ask,
            sl_distance=sl_d,
            tp_distance=tp_d,
            stops_level=info.trade_stops_level,
            freeze_level=info.trade_freeze_level,
            point=info.point,
            digits=info.digits,
        )
        if sl:
            req["sl"] = sl
        if tp:
            req["tp"] = tp

    def prepare(
        self,
        symbol: str,
        bar_close: int,
        intent: str,
        *,
        order_type: int,
        volume: float,
        position: int | None = None,
    ) -> PreparedIntent:
        """Journal an intent (``pending``) ahead of its send; durable from the next commit
        point. Send it with :meth:`execute` (``prepared=``) or end it with :meth:`abandon`."""
        cid = client_order_id(self.login, self.magic, symbol, bar_close, intent)
        base: dict[str, Any] = {
            "action": mt5.TRADE_ACTION_DEAL,
            "symbol": symbol,
            "volume": float(volume),
            "type": order_type,
            "deviation": self.config.deviation_points,
            "magic": self.magic,
            "comment": cid,
            "type_time": mt5.ORDER_TIME_GTC,
        }
        if position is not None:
            base["position"] = int(position)
        new = self.journal.intent_begin(Intent(cid, symbol, int(bar_close), intent, dict(base)))
        return PreparedIntent(cid, symbol, int(bar_close), intent, base, new)

    def abandon(self, prepared: PreparedIntent, detail: str) -> None:
        """A prepared intent that will not be sent: ``failed`` with ``detail``, if it was
        journaled now. One from an earlier attempt is left as it is (its order may be at the
        broker: reconciliation looks it up)."""
        if prepared.new:
            self.journal.intent_end(
                prepared.client_id,
                "failed",
                {"results": [], "reason": str(Reason.ORDER_FAILED), "detail": detail},
                None,
            )

    def _end(self, out: OrderOutcome) -> None:
        result = {
            "results": out.results,
            "reason": str(out.reason) if out.reason else None,
            "detail": out.detail,
        }
        self.journal.intent_end(out.client_id, out.status, result, out.retcode)
