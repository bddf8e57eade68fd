"""MkDocs hook: the CLI and settings reference pages, generated from the code at build time.

``mkdocs.yml`` lists this file under ``hooks:``. A page that contains the marker
``<!-- reference:cli -->`` or ``<!-- reference:settings -->`` gets it replaced by Markdown
rendered from the live Typer app and the pydantic-settings classes, so the reference can never
drift from what ``tx --help`` and the environment actually accept.
"""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings

CLI_MARKER = "<!-- reference:cli -->"
SETTINGS_MARKER = "<!-- reference:settings -->"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _param_row(p: Any) -> str:
    if p.param_type_name == "argument":
        name = f"`{p.name.upper()}`"
        kind = "argument"
    else:
        name = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        kind = "flag" if getattr(p, "is_flag", False) else "option"
    try:
        ptype = p.display_type(None).strip("<>") if not getattr(p, "is_flag", False) else ""
    except Exception:  # a parameter type that needs a live context: leave the column empty
        ptype = ""
    default = p.default if p.default not in (None, (), "") and not callable(p.default) else ""
    help_ = getattr(p, "help", None) or ""
    req = "yes" if p.required else ""
    return f"| {name} | {kind} | {_cell(ptype)} | {_cell(default)} | {req} | {_cell(help_)} |"


def _walk(cmd: Any, path: list[str], out: list[str]) -> None:
    if getattr(cmd, "hidden", False):
        return
    title = " ".join(path)
    level = "#" * min(len(path) + 1, 4)
    out.append(f"{level} `{title}`\n")
    if cmd.help:
        out.append(cmd.help.strip().split("\n\n")[0].strip() + "\n")
    params = [
        p
        for p in cmd.params
        if not getattr(p, "hidden", False)
        and p.name not in {"help", "install_completion", "show_completion"}
    ]
    if params:
        out.append("| name | kind | type | default | required | help |")
        out.append("|---|---|---|---|---|---|")
        out.extend(_param_row(p) for p in params)
        out.append("")
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            _walk(cmd.commands[name], [*path, name], out)


def render_cli() -> str:
    """Markdown for every `tx` command: its help and a table of its arguments and options."""
    import typer

    from titanovax.cli import app

    root = typer.main.get_command(app)
    out: list[str] = []
    _walk(root, ["tx"], out)
    return "\n".join(out)


def _settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    from engine.config import EngineSettings
    from engine.mt5.settings import MT5Settings
    from serving.settings import ServingSettings
    from titanovax.backup import BackupSettings
    from titanovax.observe import AlertThresholds
    from titanovax.settings import PlatformSettings
    from training.monitor.settings import ModelMonitorSettings

    return [
        ("Platform (`titanovax/settings.py`)", PlatformSettings),
        ("MT5 gateway (`engine/mt5/settings.py`)", MT5Settings),
        ("Serving (`serving/settings.py`)", ServingSettings),
        ("Engine and risk (`engine/config.py`)", EngineSettings),
        ("Alert thresholds (`titanovax/observe.py`)", AlertThresholds),
        ("Backups (`titanovax/backup.py`)", BackupSettings),
        ("Model monitoring (`training/monitor/settings.py`)", ModelMonitorSettings),
    ]


def render_settings() -> str:
    """Markdown tables of every ``TX_*`` variable: type, default, description."""
    from titanovax.settings import PROJECT_ROOT

    out: list[str] = []
    for title, cls in _settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        out.append(f"## {title}\n")
        out.append("| variable | type | default | description |")
        out.append("|---|---|---|---|")
        for name, field in cls.model_fields.items():
            env = (field.alias or f"{prefix}{name}").upper()
            ann = getattr(field.annotation, "__name__", None) or str(field.annotation)
            ann = ann.replace("typing.", "")
            secret = "SecretStr" in ann
            if field.is_required():
                default = "(required)"
            elif secret or field.default is None:
                default = ""
            elif field.default_factory is not None:
                default = _cell(field.default_factory())  # type: ignore[call-arg]
            else:
                default = _cell(field.default)
            default = default.replace(str(PROJECT_ROOT), ".")
            out.append(f"| `{env}` | {_cell(ann)} | {default} | {_cell(field.description or '')} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: fill the reference markers."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, render_cli())
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, render_settings())
    return markdown
