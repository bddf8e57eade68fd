"""The MT5 protocol and the simulated terminal checked against the real API's types.

References, both installed in the venv and parsed here (never copied into the tests):

* ``metatrader5-stubs`` (``MetaTrader5-stubs/__init__.pyi``): constants, the named tuples it
  declares (``OrderSendResult``, ``TradePosition``, ``Tick``, ``TradeOrder``, ``TerminalInfo``),
  the ``TradeRequest`` TypedDict and the documented ``copy_rates_*`` columns;
* for the structures the stubs (0.1.3) do not declare — ``AccountInfo``, ``SymbolInfo``,
  ``TradeDeal``, ``OrderCheckResult`` — the official documentation's ``_asdict()`` / DataFrame
  printouts, which ``mt5linux`` ships in its docstrings.

The adapters are type-checked against the stubs by mypy (``make typecheck-mt5``); the last
test runs it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from engine.mt5 import protocol as P
from engine.mt5.sim import SimulatedTerminal, SyntheticFeed

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PURELIB = Path(sysconfig.get_paths()["purelib"])
STUB = PURELIB / "MetaTrader5-stubs" / "__init__.pyi"
DOCS = PURELIB / "mt5linux" / "metatrader5.py"
NOT_IN_STUBS = {
    "RES_E_NO_IPC": "alias of RES_E_INTERNAL_FAIL_CONNECT, the code before initialize()",
    "SYMBOL_FILLING_FOK": "MQL5 symbol_info().filling_mode bit; the Python module exports no name",
    "SYMBOL_FILLING_IOC": "MQL5 symbol_info().filling_mode bit; the Python module exports no name",
}


def _eval(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _eval(node.left) | _eval(node.right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    raise ValueError(f"unexpected constant expression {ast.dump(node)}")


class Stubs(NamedTuple):
    constants: dict[str, int]
    classes: dict[str, list[tuple[str, str]]]  # name -> [(field, annotation)]
    bases: dict[str, str]
    functions: dict[str, ast.FunctionDef]


@pytest.fixture(scope="module")
def stubs() -> Stubs:
    assert STUB.exists(), f"metatrader5-stubs is not installed ({STUB}); run `make setup`"
    tree = ast.parse(STUB.read_text())
    consts: dict[str, int] = {}
    classes: dict[str, list[tuple[str, str]]] = {}
    bases: dict[str, str] = {}
    funcs: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.value is not None
        ):
            if node.target.id.isupper():
                consts[node.target.id] = _eval(node.value)
        elif isinstance(node, ast.ClassDef):
            bases[node.name] = ast.unparse(node.bases[0]) if node.bases else ""
            classes[node.name] = [
                (st.target.id, ast.unparse(st.annotation))
                for st in node.body
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
            ]
        elif isinstance(node, ast.FunctionDef):
            funcs[node.name] = node
    return Stubs(consts, classes, bases, funcs)


def _documented(block_start: str) -> list[tuple[str, str]]:
    """``[(field, python type)]`` of an ``x._asdict()`` printout in the official docs."""
    text = DOCS.read_text()
    assert block_start in text, f"{block_start!r} not in the mt5linux docstrings"
    for chunk in text.split(block_start)[1:]:  # the printout, not the code that prints it
        out = []
        for line in chunk.split("```", 1)[0].strip().splitlines():
            m = re.match(r"^\s*([a-z_0-9]+)=(.*)$", line)
            if m is None:
                break
            name, value = m.groups()
            kind = (
                "bool"
                if value in ("True", "False")
                else "int"
                if re.fullmatch(r"-?\d+", value)
                else "float"
                if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", value)
                else "str"
            )
            out.append((name, kind))
        if len(out) >= 3:
            return out
    raise AssertionError(f"no printout after {block_start!r}")


def _documented_columns(header_after: str) -> list[str]:
    """Column names of a DataFrame printout in the official docs (history_deals_get)."""
    text = DOCS.read_text()
    tail = text.split(header_after, 1)[1]
    header = next(ln for ln in tail.splitlines() if ln.strip().startswith("ticket"))
    return header.split()


def _fields(cls: type) -> list[str]:
    return list(cls._fields)  # type: ignore[attr-defined]


# --- constants and structures ---------------------------------------------------------------


def test_protocol_constants_when_compared_then_equal_the_stubs_values(stubs: Stubs) -> None:
    ours = {
        k: v
        for k, v in vars(P).items()
        if k.isupper() and isinstance(v, int) and not isinstance(v, bool)
    }
    assert len(ours) > 60
    wrong = {
        k: (v, stubs.constants[k])
        for k, v in ours.items()
        if k in stubs.constants and stubs.constants[k] != v
    }
    assert wrong == {}
    assert sorted(set(ours) - set(stubs.constants)) == sorted(NOT_IN_STUBS)
    assert stubs.constants["RES_E_INTERNAL_FAIL_CONNECT"] == P.RES_E_NO_IPC
    for name, tf in P.TIMEFRAMES.items():
        assert stubs.constants[f"TIMEFRAME_{name}"] == tf
    assert all(
        P.is_ipc_error(stubs.constants[k])
        for k in stubs.constants
        if k.startswith("RES_E_INTERNAL_FAIL")
    )
    assert not any(
        P.is_ipc_error(v)
        for k, v in stubs.constants.items()
        if k.startswith("RES_") and "INTERNAL" not in k
    )


@pytest.mark.parametrize(
    "name", ["OrderSendResult", "TradePosition", "Tick", "TradeOrder", "TerminalInfo"]
)
def test_named_tuples_when_the_stubs_declare_them_then_same_fields_in_same_order(
    stubs: Stubs, name: str
) -> None:
    assert stubs.bases[name] == "NamedTuple"
    assert _fields(getattr(P, name)) == [f for f, _ in stubs.classes[name]]


def test_trade_request_when_compared_then_same_keys_as_the_stubs_typed_dict(stubs: Stubs) -> None:
    assert stubs.bases["TradeRequest"] == "TypedDict"
    assert _fields(P.TradeRequest) == [f for f, _ in stubs.classes["TradeRequest"]]


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        ("AccountInfo", "Show account_info()._asdict():"),
        ("SymbolInfo", "Show symbol_info()._asdict():"),
    ],
)
def test_named_tuples_missing_from_the_stubs_when_compared_then_match_the_official_docs(
    stubs: Stubs, name: str, doc: str
) -> None:
    assert name not in stubs.classes  # when the stubs grow them, compare with the stubs instead
    assert _fields(getattr(P, name)) == [f for f, _ in _documented(doc)]


def test_trade_deal_and_order_check_result_when_compared_then_match_the_official_docs(
    stubs: Stubs,
) -> None:
    assert "TradeDeal" not in stubs.classes and "OrderCheckResult" not in stubs.classes
    assert _fields(P.TradeDeal) == _documented_columns("Deals with position id #")
    check = [f for f, _ in _documented("Account сurrency: USD")]  # the order_check example
    assert _fields(P.OrderCheckResult) == check


def test_rates_dtype_when_compared_then_the_documented_columns_in_order(stubs: Stubs) -> None:
    doc = ast.get_docstring(stubs.functions["copy_rates_from_pos"]) or ""
    m = re.search(r"named columns:\s*([a-z_, ]+)\.", doc)
    assert m is not None
    assert list(P.RATES_DTYPE.names or ()) == [c.strip() for c in m.group(1).split(",")]
    assert P.RATES_DTYPE["time"] == np.dtype("<i8") and P.RATES_DTYPE["spread"] == np.dtype("<i4")


# --- the simulated terminal's answers -----------------------------------------------------------

_PY = {"int": int, "float": float, "str": str, "bool": bool}


def _check_types(record: Any, spec: list[tuple[str, str]]) -> list[str]:
    bad = []
    for (name, kind), value in zip(spec, record, strict=True):
        want = _PY.get(kind)
        if want is None:
            continue  # nested (request)
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = False
        if not ok:
            bad.append(f"{name}: {type(value).__name__} {value!r}, documented {kind}")
    return bad


def test_simulated_terminal_when_answering_then_every_field_has_the_documented_type(
    stubs: Stubs,
) -> None:
    end = 1_741_262_400  # 2025-03-06 12:00 UTC, a Thursday
    term = SimulatedTerminal(SyntheticFeed(seed=2, symbols=["EURUSD", "USDJPY"], end_utc=end))
    assert term.initialize()
    req = {
        "action": P.TRADE_ACTION_DEAL,
        "symbol": "USDJPY",
        "volume": 0.2,
        "type": P.ORDER_TYPE_SELL,
        "type_filling": P.ORDER_FILLING_IOC,
        "magic": 4,
        "comment": "stub",
    }
    res = term.order_send(req)
    assert res is not None and res.retcode == stubs.constants["TRADE_RETCODE_DONE"]
    answers = {
        "AccountInfo": (term.account_info(), _documented("Show account_info()._asdict():")),
        "SymbolInfo": (term.symbol_info("USDJPY"), _documented("Show symbol_info()._asdict():")),
        "Tick": (term.symbol_info_tick("USDJPY"), stubs.classes["Tick"]),
        "OrderSendResult": (res, stubs.classes["OrderSendResult"]),
        "TradePosition": ((term.positions_get() or (None,))[0], stubs.classes["TradePosition"]),
        "TerminalInfo": (term.terminal_info(), stubs.classes["TerminalInfo"]),
    }
    problems = {}
    for name, (value, spec) in answers.items():
        assert value is not None, name
        assert type(value).__name__ == name and _fields(type(value)) == [f for f, _ in spec]
        problems[name] = _check_types(value, spec)
    assert problems == {k: [] for k in answers}
    assert isinstance(res.request, P.TradeRequest)
    assert _check_types(res.request, stubs.classes["TradeRequest"]) == []
    rates = term.copy_rates_from_pos("EURUSD", stubs.constants["TIMEFRAME_M15"], 0, 20)
    assert rates is not None and rates.dtype == P.RATES_DTYPE and len(rates) == 20
    retcodes = {v for k, v in stubs.constants.items() if k.startswith("TRADE_RETCODE_")}
    rejected = term.order_send({**req, "volume": 0.123})
    assert rejected is not None and rejected.retcode in retcodes
    assert (
        term.symbol_info("NOPE") is None
        and term.last_error()[0] == stubs.constants["RES_E_NOT_FOUND"]
    )
    term.shutdown()
    assert term.account_info() is None
    assert term.last_error()[0] == stubs.constants["RES_E_INTERNAL_FAIL_CONNECT"]


# --- mypy against the stubs ------------------------------------------------------------------------


def _mypy(*paths: str) -> subprocess.CompletedProcess[str]:
    cache = ROOT / ".tx" / "mypy-mt5"
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )


def test_mypy_when_run_on_the_gateway_then_clean_against_the_stubs(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"  # proves mypy reads the stubs: a wrong call must be caught
    misuse.write_text(
        "import MetaTrader5 as mt5\n"
        "mt5.positions_get('EURUSD')\n"  # keyword-only in the real API
        "mt5.copy_rates_from_pos('EURUSD', mt5.TIMEFRAME_M1, 0)\n"  # count missing
    )
    out = _mypy("engine/mt5", str(misuse))
    errors = [ln for ln in out.stdout.splitlines() if ": error:" in ln]
    assert [e for e in errors if "misuse.py" not in e] == [], out.stdout
    assert any("positions_get" in e for e in errors) and any(
        "copy_rates_from_pos" in e for e in errors
    ), out.stdout
