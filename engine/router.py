"""Smart order routing over several MT5 venues (accounts / terminals), with failover.

A *venue* is one MT5 account reached through its own terminal — ``native``, ``bridge``
(mt5linux) or ``sim`` (an in-process simulated terminal) — with its own login, commission,
symbol names and limits (``TX_ENGINE_VENUES``, a JSON list of :class:`VenueConfig`). With no
venue configured the engine trades its one terminal exactly as before; with venues it trades
through an :class:`OrderRouter` and sees them all through a :class:`RoutedTerminal`.

**Choice.** Every opening order goes to the healthy venue with the lowest expected cost in
points for that order::

    cost = spread_points + commission_points + slippage_points
    commission_points = commission_per_lot / (tick_value * point / tick_size)
    slippage_points   = estimator.points(symbol, venue, side, volume, spread_points,
                                         vol_points, hour)       # default 0.25*spread + 0.05*vol

(``vol_points``: the standard deviation of the last 24 one-bar returns times the price, in
points.) A venue whose limits the order would break (``max_order_lots``, or ``max_lots`` of
open lots there) is skipped with that reason. Closing orders go to the venue that holds the
position. Each attempt is a ``routes`` row in the journal: venue, status, the reason in words,
the cost and the ranking of every venue.

**Failover.** A link error or timeout (``TerminalConnectionError``, an ``order_send`` answered
``None`` with an IPC error) opens the venue's :class:`CircuitBreaker`: the venue is *down* and
gets nothing until its cool-down ends and a probe (``account_info``) answers. The order then
moves to the next venue of the ranking — after its client id was looked up on every reachable
venue (a position, deal or order carrying it means it executed: not sent again).

**In doubt.** When the link dropped *during* ``order_send`` the order may have executed at that
venue. It is *in doubt*: it is not sent anywhere else while that venue cannot be asked (a second
venue would execute it twice); its intent stays ``pending``, the symbol takes no new opening
order (its exposure is unknown), other symbols trade on the other venues. When the venue
answers again, the in-doubt client ids are looked up there *before anything else is sent*:
found is ``recovered``, absent is ``not_sent`` (re-decided like any unsent intent).

**One client id everywhere.** Every venue's :class:`~engine.execution.OrderExecutor` makes the
client id with the same login (the engine's), so an order has one id whichever venue takes it,
and ``find_existing`` means the same on all of them.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator

from engine.config import ExecutionConfig
from engine.execution import OrderExecutor, OrderOutcome, client_order_id
from engine.journal import Journal
from engine.mt5 import protocol as mt5
from engine.reconcile import Mismatch, compare
from engine.risk import Reason
from engine.sizing import return_volatility
from engine.slippage_model import FixedSlippage, SlippageEstimator

log = logging.getLogger(__name__)

__all__ = [
    "CircuitBreaker",
    "MappedTerminal",
    "OrderRouter",
    "RoutedTerminal",
    "Venue",
    "VenueConfig",
    "VenueQuote",
    "open_venues",
    "parse_venues",
]

VOL_WINDOW = 24
_LINK_RETCODES = frozenset({mt5.TRADE_RETCODE_CONNECTION, 10012})  # CONNECTION, TIMEOUT
_RESOLVED_STATUSES = frozenset({"done", "recovered"})
# a venue whose last attempt of a client id ended so may hold it (chosen: no answer recorded)
_MAY_HOLD = frozenset({"chosen", "in_doubt", "done", "recovered"})


# --- configuration ---------------------------------------------------------------------------
class VenueConfig(BaseModel):
    """One venue of ``TX_ENGINE_VENUES`` (a JSON list of these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=24, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["native", "bridge", "sim"]
    address: str = Field(
        default="",
        description="bridge: host:port of the mt5linux server; native: path of terminal64.exe; "
        "sim: unused",
    )
    login: int | None = None
    password: SecretStr | None = None
    server: str | None = None
    commission_per_lot: float = Field(default=0.0, ge=0, description="account currency, per side")
    symbol_map: dict[str, str] = Field(
        default_factory=dict, description="engine symbol -> the venue's name (EURUSD -> EURUSD.r)"
    )
    max_lots: float = Field(default=0.0, ge=0, description="open lots of this engine here; 0: none")
    max_order_lots: float = Field(default=0.0, ge=0, description="lots of one order; 0: no limit")
    timeout_s: float = Field(default=3.0, gt=0, description="deadline of one call (bridge)")
    cooldown_s: float = Field(default=2.0, ge=0, description="first down time before a probe")
    # sim only: the simulated market of this venue
    seed: int = 7
    spread_add: int = Field(default=0, ge=0, description="sim: points added to every spread")

    @field_validator("symbol_map")
    @classmethod
    def _unique(cls, v: dict[str, str]) -> dict[str, str]:
        if len(set(v.values())) != len(v):
            raise ValueError("symbol_map maps two engine symbols onto one venue symbol")
        return v

    @property
    def host_port(self) -> tuple[str, int]:
        """``address`` of a bridge venue as ``(host, port)``."""
        host, sep, port = self.address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(
                f"venue {self.name}: bridge address must be host:port, got {self.address!r}"
            )
        return host or "127.0.0.1", int(port)


_VENUES = TypeAdapter(list[VenueConfig])


def parse_venues(text: str | Sequence[Any] | None) -> list[VenueConfig]:
    """``TX_ENGINE_VENUES`` (JSON text, or the decoded list) as venue configs; ``[]`` for none.
    Raises ``ValueError`` naming the bad entry (bad JSON, unknown field, duplicate name, a
    bridge without host:port)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return []
    data = json.loads(text) if isinstance(text, str) else list(text)
    venues = _VENUES.validate_python(data)
    names = [v.name for v in venues]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"TX_ENGINE_VENUES: venue name(s) {dup} used twice")
    for v in venues:
        if v.kind == "bridge":
            v.host_port  # noqa: B018  # raises for a bad address
    return venues


# --- health ----------------------------------------------------------------------------------
class CircuitBreaker:
    """Up, or down until a cool-down ends (then one probe may close it again). The cool-down
    doubles for every failed probe, up to ``max_cooldown_s``; a success resets it."""

    def __init__(
        self,
        cooldown_s: float = 2.0,
        max_cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = float(cooldown_s)
        self.max = max(float(max_cooldown_s), self.base)
        self.clock = clock
        self.down = False
        self.cooldown = self.base
        self.down_at = 0.0
        self.reason = ""
        self.failures = 0

    def failure(self, reason: str) -> None:
        """A link error: down now (a second failure while down lengthens the cool-down)."""
        self.cooldown = min(self.max, self.cooldown * 2) if self.down else self.base
        self.down, self.down_at, self.reason = True, self.clock(), reason
        self.failures += 1

    def success(self) -> bool:
        """The venue answered; ``True`` when it was down (it just came back)."""
        was = self.down
        self.down, self.cooldown, self.reason = False, self.base, ""
        return was

    def may_probe(self) -> bool:
        """Down and the cool-down is over: one call may test the link."""
        return self.down and self.clock() - self.down_at >= self.cooldown


# --- one venue's terminal with its own symbol names ------------------------------------------
class MappedTerminal:
    """A venue's terminal seen with the engine's symbol names (``symbol_map``), which also
    remembers whether an ``order_send`` ended without an answer (``ambiguous``) and no complete
    look-up has answered since."""

    def __init__(self, terminal: Any, symbol_map: dict[str, str] | None = None) -> None:
        self.terminal = terminal
        self.out = dict(symbol_map or {})
        self.back = {v: k for k, v in self.out.items()}
        self.ambiguous = False

    def _v(self, symbol: str) -> str:
        return self.out.get(symbol, symbol)

    def _rec(self, r: Any) -> Any:
        if r is None or not hasattr(r, "_replace"):
            return r
        fields = getattr(r, "_fields", ())
        if "symbol" in fields and r.symbol in self.back:
            r = r._replace(symbol=self.back[r.symbol])
        if "name" in fields and isinstance(r.name, str) and r.name in self.back:
            r = r._replace(name=self.back[r.name])
        return r

    def _recs(self, rs: Any) -> Any:
        return None if rs is None else tuple(self._rec(r) for r in rs)

    def initialize(self, *a: Any, **kw: Any) -> bool:
        return bool(self.terminal.initialize(*a, **kw))

    def shutdown(self) -> None:
        self.terminal.shutdown()

    def last_error(self) -> tuple[int, str]:
        err: tuple[int, str] = self.terminal.last_error()
        return err

    def account_info(self) -> Any:
        return self.terminal.account_info()

    def symbol_info(self, symbol: str) -> Any:
        return self._rec(self.terminal.symbol_info(self._v(symbol)))

    def symbol_info_tick(self, symbol: str) -> Any:
        return self.terminal.symbol_info_tick(self._v(symbol))

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        return bool(self.terminal.symbol_select(self._v(symbol), enable))

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start: int, count: int) -> Any:
        return self.terminal.copy_rates_from_pos(self._v(symbol), timeframe, start, count)

    def copy_rates_range(self, symbol: str, timeframe: int, lo: Any, hi: Any) -> Any:
        return self.terminal.copy_rates_range(self._v(symbol), timeframe, lo, hi)

    def _request(self, request: Any) -> dict[str, Any]:
        req = dict(request)
        if "symbol" in req:
            req["symbol"] = self._v(str(req["symbol"]))
        return req

    def order_check(self, request: Any) -> Any:
        return self.terminal.order_check(self._request(request))

    def order_send(self, request: Any) -> Any:
        try:
            res = self.terminal.order_send(self._request(request))
        except mt5.TerminalError as exc:
            # a ResilientTerminal raises from order_send only when it could not connect (a
            # link lost during the send answers None): the order never left
            if exc.is_connection_error and not _raises_before_send(self.terminal):
                self.ambiguous = True
            raise
        if res is None:
            if mt5.is_ipc_error(int(self.terminal.last_error()[0])):
                self.ambiguous = True
        elif int(res.retcode) in _LINK_RETCODES:
            self.ambiguous = True
        return res

    def positions_get(self, symbol: str | None = None, ticket: int | None = None) -> Any:
        kw: dict[str, Any] = {}
        if symbol is not None:
            kw["symbol"] = self._v(symbol)
        if ticket is not None:
            kw["ticket"] = ticket
        return self._recs(self.terminal.positions_get(**kw))

    def history_deals_get(self, *args: Any, **kw: Any) -> Any:
        out = self._recs(self.terminal.history_deals_get(*args, **kw))
        if out is not None:
            self.ambiguous = False  # a look-up answered after the lost send (find_existing)
        return out

    def orders_get(self, symbol: str | None = None, **kw: Any) -> Any:
        fn = getattr(self.terminal, "orders_get", None)
        if fn is None:
            return ()
        if symbol is not None:
            kw["symbol"] = self._v(symbol)
        return self._recs(fn(**kw))


# --- venues ----------------------------------------------------------------------------------
@dataclass
class Venue:
    """A configured venue, its terminal (engine symbol names) and its health."""

    config: VenueConfig
    terminal: MappedTerminal
    breaker: CircuitBreaker
    last_positions: tuple[Any, ...] = ()
    last_account: Any = None
    last_deals: tuple[Any, ...] = ()
    # wall time (epoch s) each ``last_*`` was read at (taken just before the call)
    read_at: dict[str, float] = field(default_factory=dict)
    # symbol -> wall time of its last order completed here after ``last_positions`` was read
    unread_fills: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name

    def status(self, magic: int | None = None) -> dict[str, Any]:
        """Health and the open lots it last showed (of ``magic`` when given)."""
        b = self.breaker
        return {
            "venue": self.name,
            "kind": self.config.kind,
            "up": not b.down,
            "reason": b.reason,
            "failures": b.failures,
            "open_lots": round(
                sum(
                    float(p.volume)
                    for p in self.last_positions
                    if magic is None or int(p.magic) == magic
                ),
                8,
            ),
        }


def open_venues(
    configs: Iterable[VenueConfig],
    *,
    clock: Callable[[], int] | None = None,
    server_utc_offset_hours: int = 2,
) -> list[Venue]:
    """Terminals for the configured venues. A bridge or native venue is connected lazily (a
    venue down at start is just a venue that is down); a sim venue is a simulated terminal of
    its own over the seeded synthetic market (its spread widened by ``spread_add``)."""
    out = []
    for c in configs:
        term: Any
        if c.kind == "sim":
            from engine.mt5.settings import SimSlippageSettings
            from engine.mt5.sim import SimulatedTerminal, SyntheticFeed
            from engine.mt5.widened import WidenedFeed

            feed: Any = SyntheticFeed(seed=c.seed, server_utc_offset_hours=server_utc_offset_hours)
            if c.spread_add:
                feed = WidenedFeed(feed, c.spread_add)
            term = SimulatedTerminal(
                feed,
                clock=clock,
                server_utc_offset_hours=server_utc_offset_hours,
                slippage=SimSlippageSettings().process(),
                login=c.login or 50_000_001,
                server=c.server or f"TitanovaX-Sim-{c.name}",
            )
            term.initialize()
        else:
            term = _resilient(c)
        out.append(Venue(c, MappedTerminal(term, c.symbol_map), CircuitBreaker(c.cooldown_s)))
    return out


def _resilient(c: VenueConfig) -> Any:
    """A bridge/native terminal that reconnects once per call at most (the router, not the
    link, decides when to try the venue again), not connected yet."""
    from engine.mt5.resilient import Backoff, ResilientTerminal

    secret = c.password.get_secret_value() if c.password is not None else None
    connect: Callable[[], Any]
    if c.kind == "bridge":
        from engine.mt5.bridge import BridgeTerminal

        host, port = c.host_port

        def connect() -> Any:
            return BridgeTerminal.connect(
                host, port, timeout_s=c.timeout_s, login=c.login, password=secret, server=c.server
            )
    else:
        from engine.mt5.native import NativeTerminal

        def connect() -> Any:
            return NativeTerminal.connect(
                c.address or None, login=c.login, password=secret, server=c.server
            )

    return ResilientTerminal(
        connect, attempts=1, backoff=Backoff(0.0, 0.0), name=f"mt5-{c.kind}-{c.name}"
    )


@dataclass
class VenueQuote:
    """The expected cost of one order at one venue, in points, and its parts."""

    venue: str
    cost_points: float
    spread_points: float
    commission_points: float
    slippage_points: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self).items()}


@dataclass
class _InDoubt:
    venue: str
    symbol: str
    intent: str
    since: float = field(default_factory=time.time)


def _raises_before_send(terminal: Any) -> bool:
    from engine.mt5.resilient import ResilientTerminal

    return isinstance(terminal, ResilientTerminal)


def _link_error(exc: BaseException) -> bool:
    return isinstance(exc, mt5.TerminalError) and exc.is_connection_error


# --- the router ------------------------------------------------------------------------------
class OrderRouter:
    """Routes each order to the cheapest healthy venue, fails over on link errors, and never
    sends one client id twice across venues (see the module docstring). Has the two calls the
    engine uses of an :class:`~engine.execution.OrderExecutor`: ``execute`` and
    ``find_existing``."""

    def __init__(
        self,
        venues: Sequence[Venue],
        journal: Journal,
        config: ExecutionConfig,
        *,
        magic: int,
        estimator: SlippageEstimator | None = None,
        timeframe: int | None = mt5.TIMEFRAME_M5,
    ) -> None:
        if not venues:
            raise ValueError("OrderRouter needs at least one venue")
        self.venues = list(venues)
        self.by_name = {v.name: v for v in self.venues}
        self.journal = journal
        self.config = config
        self.magic = magic
        self.estimator: SlippageEstimator = estimator or FixedSlippage()
        self.timeframe = timeframe
        self.executors: dict[str, OrderExecutor] = {}
        self.in_doubt: dict[str, _InDoubt] = {}
        self.lock = threading.RLock()
        self.login = 0
        self.terminal = RoutedTerminal(self)

    # -- wiring ----------------------------------------------------------------------------
    def bind(
        self,
        *,
        login: int,
        sleep: Callable[[float], None] = time.sleep,
        on_retcode: Callable[[int | None], None] | None = None,
        may_send: Callable[[], bool] = lambda: True,
        send_gate: threading.Lock | None = None,
    ) -> OrderRouter:
        """One executor per venue, all making client ids with ``login`` (the engine's), and
        the in-doubt orders saved in the journal (its scope is set by now)."""
        self.login = int(login)
        gate = send_gate or threading.Lock()
        for v in self.venues:
            self.executors[v.name] = OrderExecutor(
                v.terminal,
                self.journal,
                self.config,
                magic=self.magic,
                login=self.login,
                sleep=sleep,
                on_retcode=on_retcode,
                may_send=may_send,
                send_gate=gate,
                timeframe=self.timeframe,
                venue=v.name,
            )
        saved = self.journal.load_state("router")
        for cid, d in (json.loads(saved) if saved else {}).get("in_doubt", {}).items():
            self.in_doubt[cid] = _InDoubt(**d)
        return self

    def _save(self) -> None:
        self.journal.save_state(
            "router", json.dumps({"in_doubt": {k: vars(d) for k, d in self.in_doubt.items()}})
        )

    def _route(
        self,
        cid: str,
        symbol: str,
        intent: str,
        venue: str,
        status: str,
        reason: str,
        quote: VenueQuote | None = None,
        ranking: list[dict[str, Any]] | None = None,
    ) -> None:
        self.journal.record_route(
            cid,
            symbol=symbol,
            intent=intent,
            venue=venue,
            status=status,
            reason=reason,
            cost_points=quote.cost_points if quote else None,
            ranking=ranking,
        )
        log.info("route %s %s %s at %s: %s", cid, intent, status, venue, reason)

    # -- health ----------------------------------------------------------------------------
    def _down(self, v: Venue, exc: BaseException | str) -> None:
        was = v.breaker.down
        v.breaker.failure(str(exc))
        if not was:
            log.warning("venue %s down: %s", v.name, exc)

    def reachable(self, v: Venue) -> bool:
        """Up, or down with its cool-down over and a probe answering (then every order in
        doubt there is looked up before the venue gets anything else)."""
        if not v.breaker.down:
            return True
        if not v.breaker.may_probe():
            return False
        with self.lock:  # one probe and one look-up of the orders in doubt at a time
            return v.breaker.down is False or self._probe(v)

    def _probe(self, v: Venue) -> bool:
        if not v.breaker.down:
            return True
        try:
            acct = v.terminal.account_info()
            if acct is None:
                raise mt5.TerminalConnectionError("account_info", v.terminal.last_error())
        except Exception as exc:
            self._down(v, exc)
            return False
        why = v.breaker.reason
        v.breaker.success()
        v.last_account = acct
        log.warning("venue %s answers again (down after: %s)", v.name, why or "an outage")
        try:
            self._resolve_in_doubt(v)
        except Exception as exc:
            if not _link_error(exc):
                raise
            self._down(v, exc)
            return False
        return True

    def _resolve_in_doubt(self, v: Venue) -> None:
        """Look every client id in doubt at ``v`` up there: recovered or not sent."""
        for cid, d in list(self.in_doubt.items()):
            if d.venue != v.name:
                continue
            found = self.executors[v.name].find_existing(d.symbol, cid, time.time())
            status = "recovered" if found is not None else "not_sent"
            self.journal.intent_end(
                cid, status, {"results": [found] if found else [], "venue": v.name}, None
            )
            self._route(
                cid,
                d.symbol,
                d.intent,
                v.name,
                status,
                f"{v.name} answers again: the order in doubt there was "
                + ("found (executed once, there)" if found else "not found (never executed)"),
            )
            del self.in_doubt[cid]
            self._save()

    def healthy(self) -> list[Venue]:
        """The venues that answer now (probing those whose cool-down is over)."""
        return [v for v in self.venues if self.reachable(v)]

    # -- cost ------------------------------------------------------------------------------
    def quote(self, v: Venue, symbol: str, side: str, volume: float, now_utc: float) -> VenueQuote:
        """The expected cost of the order at ``v`` (raises on the venue's link errors)."""
        info = v.terminal.symbol_info(symbol)
        tick = v.terminal.symbol_info_tick(symbol)
        if info is None or tick is None or not info.point:
            raise LookupError(f"{symbol} has no quote at {v.name}")
        point = float(info.point)
        spread = (float(tick.ask) - float(tick.bid)) / point
        per_point = (
            float(info.trade_tick_value) * point / float(info.trade_tick_size)
            if info.trade_tick_size and info.trade_tick_value
            else 0.0
        )
        commission = v.config.commission_per_lot / per_point if per_point else 0.0
        vol_points = 0.0
        if self.timeframe is not None:
            rates = v.terminal.copy_rates_from_pos(symbol, self.timeframe, 1, VOL_WINDOW + 1)
            if rates is not None and len(rates):
                vol = return_volatility(rates["close"], VOL_WINDOW)
                vol_points = vol * float(rates["close"][-1]) / point
        slip = float(
            self.estimator.points(
                symbol=symbol,
                venue=v.name,
                side=side,
                volume=float(volume),
                spread_points=spread,
                vol_points=vol_points,
                hour=int(now_utc // 3600) % 24,
            )
        )
        return VenueQuote(v.name, spread + commission + slip, spread, commission, slip)

    def rank(
        self, symbol: str, side: str, volume: float, now_utc: float
    ) -> tuple[list[tuple[Venue, VenueQuote]], list[dict[str, Any]]]:
        """Healthy venues with a quote, cheapest first, and the ranking as journaled (every
        venue: its cost or why it has none)."""
        ranked: list[tuple[Venue, VenueQuote]] = []
        table: list[dict[str, Any]] = []
        for v in self.venues:
            if not self.reachable(v):
                table.append({"venue": v.name, "down": v.breaker.reason or "down"})
                continue
            try:
                q = self.quote(v, symbol, side, volume, now_utc)
            except Exception as exc:
                if _link_error(exc):
                    self._down(v, exc)
                table.append({"venue": v.name, "no_quote": f"{type(exc).__name__}: {exc}"})
                continue
            ranked.append((v, q))
            table.append(q.as_dict())
        ranked.sort(key=lambda x: (x[1].cost_points, self.venues.index(x[0])))
        return ranked, table

    def _limit(self, v: Venue, volume: float) -> str | None:
        c = v.config
        if c.max_order_lots and volume > c.max_order_lots + 1e-9:
            return f"order of {volume:g} lots > max_order_lots {c.max_order_lots:g}"
        if c.max_lots:
            held = sum(
                float(p.volume)
                for p in (v.terminal.positions_get() or ())
                if int(p.magic) == self.magic
            )
            if held + volume > c.max_lots + 1e-9:
                return f"{held:g} open + {volume:g} lots > max_lots {c.max_lots:g}"
        return None

    # -- look-up ---------------------------------------------------------------------------
    def _suspects(self, cid: str) -> set[str]:
        """Venues that may hold ``cid``: those whose last attempt did not end in a definite
        "not there" (``link_error`` before the send, ``skipped``, ``not_sent``, ``failed``);
        for an intent older than the router, the first venue."""
        last: dict[str, str] = {}
        for r in self.journal.routes(cid):
            last[r["venue"]] = r["status"]
        names = {v for v, st in last.items() if st in _MAY_HOLD}
        if cid in self.in_doubt:
            names.add(self.in_doubt[cid].venue)
        return names if last else {self.venues[0].name}

    def find_existing(self, symbol: str, client_id: str, now_utc: float) -> dict[str, Any] | None:
        """The trace of ``client_id`` on any reachable venue (with ``venue`` added). Raises
        :class:`~engine.mt5.protocol.TerminalConnectionError` when it was found nowhere but a
        venue that may hold it cannot be asked: absent cannot be told from unknown."""
        with self.lock:
            unreachable: list[str] = []
            for v in self.venues:
                if not self.reachable(v):
                    unreachable.append(v.name)
                    continue
                try:
                    found = self.executors[v.name].find_existing(symbol, client_id, now_utc)
                except Exception as exc:
                    if not _link_error(exc):
                        raise
                    self._down(v, exc)
                    unreachable.append(v.name)
                    continue
                if found is not None:
                    return {**found, "venue": v.name}
            blind = sorted(set(unreachable) & self._suspects(client_id))
            if blind:
                raise mt5.TerminalConnectionError(
                    "find_existing",
                    (mt5.RES_E_INTERNAL_FAIL, f"venue(s) {blind} down: {client_id} may be there"),
                )
            return None

    @property
    def broker_s(self) -> float:
        """Seconds spent inside ``order_send`` so far, over every venue's executor."""
        return sum(ex.broker_s for ex in self.executors.values())

    # -- sending ---------------------------------------------------------------------------
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
        venue: str | None = None,
    ) -> OrderOutcome:
        """One intent's order on the best venue, exactly once across venues (module docstring).
        ``position``/``venue``: a closing order, sent where that position is."""
        with self.lock:
            if position is not None:
                return self._close(
                    symbol,
                    bar_close,
                    intent,
                    order_type=order_type,
                    volume=volume,
                    now_utc=now_utc,
                    position=position,
                    flatten=flatten,
                    venue=venue,
                )
            return self._open(
                symbol,
                bar_close,
                intent,
                order_type=order_type,
                volume=volume,
                now_utc=now_utc,
                sl_distance=sl_distance,
                tp_distance=tp_distance,
                flatten=flatten,
            )

    def _failed(
        self, cid: str, symbol: str, bar_close: int, intent: str, detail: str, *, end: bool = True
    ) -> OrderOutcome:
        out = OrderOutcome(
            cid,
            symbol,
            int(bar_close),
            intent,
            "failed",
            reason=Reason.TERMINAL_UNAVAILABLE,
            detail=detail,
        )
        if end and self.journal.intent(cid) is not None and cid not in self.in_doubt:
            self.journal.intent_end(
                cid, "failed", {"results": [], "reason": str(out.reason), "detail": detail}, None
            )
        return out

    def _close(
        self,
        symbol: str,
        bar_close: int,
        intent: str,
        *,
        order_type: int,
        volume: float,
        now_utc: float,
        position: int,
        flatten: bool,
        venue: str | None,
    ) -> OrderOutcome:
        name = venue or self._holder(symbol, position)
        routed = f"{intent}@{name}"  # tickets of two venues may be equal: one id per venue
        cid = client_order_id(self.login, self.magic, symbol, bar_close, routed)
        v = self.by_name.get(name or "")
        if v is None:
            return self._failed(
                cid, symbol, bar_close, routed, f"no venue holds position {position}"
            )
        if not self.reachable(v):
            return self._failed(
                cid, symbol, bar_close, routed, f"position {position} is at {v.name}, which is down"
            )
        self._route(cid, symbol, routed, v.name, "chosen", f"the position is held at {v.name}")
        try:
            out = self.executors[v.name].execute(
                symbol,
                bar_close,
                routed,
                order_type=order_type,
                volume=volume,
                now_utc=now_utc,
                position=position,
                flatten=flatten,
            )
        except Exception as exc:
            if not _link_error(exc):
                raise
            self._down(v, exc)
            if v.terminal.ambiguous:
                self.in_doubt[cid] = _InDoubt(v.name, symbol, routed)
                self._save()
                self._route(
                    cid, symbol, routed, v.name, "in_doubt", f"link lost during send: {exc}"
                )
                return self._failed(
                    cid, symbol, bar_close, routed, f"in doubt at {v.name}", end=False
                )
            self._route(cid, symbol, routed, v.name, "link_error", str(exc))
            return self._failed(cid, symbol, bar_close, routed, f"{v.name} down: {exc}")
        self._route(
            cid, symbol, routed, v.name, out.status, out.detail or (f"retcode {out.retcode}")
        )
        self._filled(v, symbol, out, opening=False)
        return out

    def _filled(self, v: Venue, symbol: str, out: OrderOutcome, *, opening: bool) -> None:
        """An order completed at ``v``: its effect is not in ``v.last_positions`` until the
        next read, so read ``v``'s positions now. Should ``v`` die before that read, what it
        last showed misses an opening fill (the engine would see the symbol flat there): the
        symbol takes no opening order while ``v`` is down (:meth:`_open`)."""
        if out.status not in _RESOLVED_STATUSES:
            return
        if opening:  # a close missed keeps the position in what it showed: exposure overstated
            v.unread_fills[symbol] = time.time()
        t = time.time()
        try:
            got = v.terminal.positions_get()
        except Exception as exc:
            if not _link_error(exc):
                raise
            self._down(v, exc)
            return
        if got is not None:
            v.last_positions = got
            v.read_at["last_positions"] = t
            v.unread_fills = {k: at for k, at in v.unread_fills.items() if at >= t}

    def _holder(self, symbol: str, ticket: int) -> str | None:
        for v in self.venues:
            if any(int(p.ticket) == int(ticket) and p.symbol == symbol for p in v.last_positions):
                return v.name
        return None

    def _open(
        self,
        symbol: str,
        bar_close: int,
        intent: str,
        *,
        order_type: int,
        volume: float,
        now_utc: float,
        sl_distance: float,
        tp_distance: float,
        flatten: bool,
    ) -> OrderOutcome:
        cid = client_order_id(self.login, self.magic, symbol, bar_close, intent)
        side = "buy" if order_type == mt5.ORDER_TYPE_BUY else "sell"
        for v in self.venues:  # a venue back from an outage is checked first
            self.reachable(v)
        if cid in self.in_doubt:
            d = self.in_doubt[cid]
            return self._failed(
                cid,
                symbol,
                bar_close,
                intent,
                f"in doubt at {d.venue} (down): not sent elsewhere",
                end=False,
            )
        unseen = [v.name for v in self.venues if v.breaker.down and symbol in v.unread_fills]
        if unseen and not flatten:
            return self._failed(
                cid,
                symbol,
                bar_close,
                intent,
                f"{symbol}: an order filled at {unseen[0]} after its positions were last read, "
                f"and {unseen[0]} is down: exposure unknown, no new order until it answers",
            )
        held = [c for c, d in self.in_doubt.items() if d.symbol == symbol]
        if held and not flatten:
            d = self.in_doubt[held[0]]
            return self._failed(
                cid,
                symbol,
                bar_close,
                intent,
                f"{symbol}: order {held[0]} in doubt at {d.venue}; no new order until it answers",
            )
        if self.journal.intent(cid) is not None:  # sent before? ask every venue first
            try:
                found = self.find_existing(symbol, cid, now_utc)
            except mt5.TerminalConnectionError as exc:
                return self._failed(cid, symbol, bar_close, intent, str(exc), end=False)
            if found is not None:
                self.journal.intent_end(cid, "recovered", {"results": [found]}, None)
                self._route(
                    cid,
                    symbol,
                    intent,
                    found["venue"],
                    "recovered",
                    "already executed there (client id found): not sent again",
                )
                return OrderOutcome(
                    cid, symbol, int(bar_close), intent, "recovered", results=[found]
                )
        ranked, table = self.rank(symbol, side, volume, now_utc)
        failures: list[str] = []
        for i, (v, q) in enumerate(ranked):
            why = self._limit(v, volume)
            if why is not None:
                self._route(cid, symbol, intent, v.name, "skipped", why, q, table)
                failures.append(f"{v.name}: {why}")
                continue
            reason = self._reason(q, ranked[i + 1 :], failures)
            self._route(cid, symbol, intent, v.name, "chosen", reason, q, table)
            v.terminal.ambiguous = False
            try:
                out = self.executors[v.name].execute(
                    symbol,
                    bar_close,
                    intent,
                    order_type=order_type,
                    volume=volume,
                    now_utc=now_utc,
                    sl_distance=sl_distance,
                    tp_distance=tp_distance,
                    flatten=flatten,
                )
            except Exception as exc:
                if not _link_error(exc):
                    raise
                self._down(v, exc)
                if v.terminal.ambiguous:
                    self.in_doubt[cid] = _InDoubt(v.name, symbol, intent)
                    self._save()
                    self._route(
                        cid,
                        symbol,
                        intent,
                        v.name,
                        "in_doubt",
                        f"link lost during order_send: {exc}",
                        q,
                    )
                    return self._failed(
                        cid,
                        symbol,
                        bar_close,
                        intent,
                        f"in doubt at {v.name}: not sent elsewhere",
                        end=False,
                    )
                self._route(
                    cid,
                    symbol,
                    intent,
                    v.name,
                    "link_error",
                    f"{exc} (before the order reached it)",
                    q,
                )
                failures.append(f"{v.name}: link error")
                try:  # before the next venue: is the id anywhere (an earlier attempt)?
                    found = self.find_existing(symbol, cid, now_utc)
                except mt5.TerminalConnectionError as exc2:
                    return self._failed(cid, symbol, bar_close, intent, str(exc2), end=False)
                if found is not None:
                    self.journal.intent_end(cid, "recovered", {"results": [found]}, None)
                    self._route(
                        cid,
                        symbol,
                        intent,
                        found["venue"],
                        "recovered",
                        "found there before the failover: not sent again",
                    )
                    return OrderOutcome(
                        cid, symbol, int(bar_close), intent, "recovered", results=[found]
                    )
                continue
            if (
                not out.ok
                and out.reason is Reason.ORDER_FAILED
                and out.detail.startswith("retcode None")
            ):
                # no answer after every retry, though look-ups answered: the venue's link
                self._down(v, out.detail)
                self._route(cid, symbol, intent, v.name, "link_error", out.detail, q)
                failures.append(f"{v.name}: {out.detail}")
                continue
            self._route(
                cid, symbol, intent, v.name, out.status, out.detail or f"retcode {out.retcode}", q
            )
            self._filled(v, symbol, out, opening=True)
            return out
        detail = (
            "no venue could take the order: "
            + ("; ".join(failures) or "none healthy")
            + (f" (ranking {table})" if not ranked else "")
        )
        return self._failed(cid, symbol, bar_close, intent, detail)

    @staticmethod
    def _reason(q: VenueQuote, rest: list[tuple[Venue, VenueQuote]], failures: list[str]) -> str:
        parts = (
            f"cost {q.cost_points:.2f} pts = spread {q.spread_points:.2f} + commission "
            f"{q.commission_points:.2f} + slippage {q.slippage_points:.2f}"
        )
        if failures:
            head = "cheapest healthy venue left after " + "; ".join(failures) + ": "
        else:
            head = "cheapest healthy venue: "
        nxt = f"; next {rest[0][0].name} at {rest[0][1].cost_points:.2f}" if rest else ""
        return head + parts + nxt

    # -- aggregate views -------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Each venue's health and open lots, and the orders in doubt."""
        return [
            {
                **v.status(self.magic),
                "in_doubt": sorted(c for c, d in self.in_doubt.items() if d.venue == v.name),
            }
            for v in self.venues
        ]

    def venue_of(self) -> dict[str, str]:
        """client id -> the venue that executed it (or last tried it), from the journal."""
        out: dict[str, str] = {}
        for r in self.journal.routes():
            if r["status"] in _MAY_HOLD:
                out[r["client_id"]] = r["venue"]
        return out

    def compare(
        self, *, positions: Iterable[Any], deals: Iterable[Any], intents: Iterable[Any], **kw: Any
    ) -> list[Mismatch]:
        """:func:`engine.reconcile.compare` per venue: each venue's positions and deals against
        the intents routed there (an intent without a route: the first venue). Keys and details
        name the venue.

        A venue that is down shows what it showed when last read: its
        snapshot is that old, so intents that ended after it are not expected in it (no
        ``missing_position`` for an order filled there after its last read, e.g. the last
        fill before it died)."""
        where = self.venue_of()
        first = self.venues[0].name
        by_v: dict[str, list[Any]] = collections.defaultdict(list)
        for it in intents:
            name = where.get(it.client_id, first)
            tail = f"@{name}"
            if it.intent.endswith(tail):
                it = dc_replace(it, intent=it.intent[: -len(tail)])
            by_v[name].append(it)
        pos = collections.defaultdict(list)
        for p in positions:
            pos[getattr(p, "venue", first)].append(p)
        dls = collections.defaultdict(list)
        for d in deals:
            dls[getattr(d, "venue", first)].append(d)
        out: list[Mismatch] = []
        since = kw.pop("since_wall")
        for v in self.venues:
            if v.breaker.down:  # not read in this pass: what it showed when last read
                read = min(v.read_at.get("last_positions", 0.0), v.read_at.get("last_deals", 0.0))
                since_v = min(since, read)
            else:
                since_v = since
            for m in compare(
                positions=pos[v.name],
                deals=dls[v.name],
                intents=by_v[v.name],
                since_wall=since_v,
                **kw,
            ):
                out.append(Mismatch(m.kind, f"{v.name}/{m.key}", {**m.detail, "venue": v.name}))
        return out


# --- the venues as one terminal --------------------------------------------------------------
_namedtuple: Any = collections.namedtuple  # fields from the protocol (not literals for mypy)
VenuePosition: Any = _namedtuple("VenuePosition", (*mt5.TradePosition._fields, "venue"))
"""A position with the venue that holds it (``TradePosition`` fields, then ``venue``)."""
VenueDeal: Any = _namedtuple("VenueDeal", (*mt5.TradeDeal._fields, "venue"))
"""A deal with its venue (``TradeDeal`` fields, then ``venue``)."""


class RoutedTerminal:
    """What the engine reads when it trades several venues: market data from the first venue
    that answers (config order), positions and deals of all venues (each with ``venue``; a
    venue that is down counts with what it last showed — its exposure does not vanish while
    it cannot be read), and one account whose balance and equity are the venues' sums."""

    venue_kind = "router"

    def __init__(self, router: OrderRouter) -> None:
        self.router = router
        self._error: tuple[int, str] = (mt5.RES_S_OK, "Success")

    def initialize(self, *a: Any, **kw: Any) -> bool:
        return True

    def shutdown(self) -> None:
        for v in self.router.venues:
            try:
                v.terminal.shutdown()
            except Exception:
                log.debug("venue %s shutdown failed", v.name, exc_info=True)

    def last_error(self) -> tuple[int, str]:
        return self._error

    def _data(self, call: str, *args: Any) -> Any:
        last: BaseException | None = None
        for v in self.router.venues:
            if not self.router.reachable(v):
                continue
            try:
                return getattr(v.terminal, call)(*args)
            except Exception as exc:
                if not _link_error(exc):
                    raise
                self.router._down(v, exc)
                last = exc
        self._error = (mt5.RES_E_INTERNAL_FAIL, "no venue answers")
        raise mt5.TerminalConnectionError(call, self._error) from last

    def symbol_info(self, symbol: str) -> Any:
        return self._data("symbol_info", symbol)

    def symbol_info_tick(self, symbol: str) -> Any:
        return self._data("symbol_info_tick", symbol)

    def symbol_select(self, symbol: str, enable: bool = True) -> bool:
        return bool(self._data("symbol_select", symbol, enable))

    def copy_rates_from_pos(self, symbol: str, timeframe: int, start: int, count: int) -> Any:
        return self._data("copy_rates_from_pos", symbol, timeframe, start, count)

    def copy_rates_range(self, symbol: str, timeframe: int, lo: Any, hi: Any) -> Any:
        return self._data("copy_rates_range", symbol, timeframe, lo, hi)

    def _each(self, read: Callable[[Venue], Any], keep: str) -> list[tuple[Venue, Any]]:
        out = []
        for v in self.router.venues:
            got = None
            if self.router.reachable(v):
                t = time.time()
                try:
                    got = read(v)
                except Exception as exc:
                    if not _link_error(exc):
                        raise
                    self.router._down(v, exc)
                else:
                    if got is not None:
                        v.read_at[keep] = t
                        if keep == "last_positions":  # fills up to t are in this snapshot
                            v.unread_fills = {k: at for k, at in v.unread_fills.items() if at >= t}
            if got is None:
                got = getattr(v, keep)  # down: what it last showed
            else:
                setattr(v, keep, got)
            out.append((v, got))
        return out

    def account_info(self) -> Any:
        accts = [
            (v, a)
            for v, a in self._each(lambda v: v.terminal.account_info(), "last_account")
            if a is not None
        ]
        if not accts:
            return None
        first = accts[0][1]
        sums = {
            f: sum(float(getattr(a, f)) for _, a in accts)
            for f in ("balance", "equity", "profit", "margin", "margin_free", "credit")
        }
        return first._replace(**sums)

    def positions_get(self, symbol: str | None = None, ticket: int | None = None) -> Any:
        out = []
        for v, ps in self._each(lambda v: v.terminal.positions_get(), "last_positions"):
            for p in ps or ():
                if symbol is not None and p.symbol != symbol:
                    continue
                if ticket is not None and int(p.ticket) != int(ticket):
                    continue
                out.append(VenuePosition(*tuple(p), v.name))
        return tuple(out)

    def history_deals_get(self, *args: Any, **kw: Any) -> Any:
        out: list[Any] = []
        for v, ds in self._each(lambda v: v.terminal.history_deals_get(*args, **kw), "last_deals"):
            out.extend(VenueDeal(*tuple(d), v.name) for d in ds or ())
        out.sort(key=lambda d: (d.time, d.venue, d.ticket))
        return tuple(out)

    def orders_get(self, symbol: str | None = None, **kw: Any) -> Any:
        out: list[Any] = []
        for v in self.router.venues:
            if self.router.reachable(v):
                try:
                    out.extend(v.terminal.orders_get(symbol=symbol, **kw) or ())
                except Exception as exc:
                    if not _link_error(exc):
                        raise
                    self.router._down(v, exc)
        return tuple(out)
