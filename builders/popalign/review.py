"""Reading a build's pairs before training on them (`popalign review`): a local page, or one self-contained file.

The page shows, per strategy and across `all`, each instruction (or conversation) with its chosen and rejected
answers side by side, their differences marked, what made each side (the contrastive prompts a prompt contrast
asked under, the plans, the models and their settings), the score and the judge's verdict where present, and the
pairs each strategy dropped by reason. Readers move with the keyboard and mark pairs good, bad or swapped
(`popalign.dataset.flags`); each flag is saved at once and the card's review table follows it.

The page is one file, `review_page.html`, with its styles and script inline: served by `serve` (starlette under
uvicorn, `popalign[review]`) with flags saved through its `/api/flag` route, or written whole with the pairs in it
by `write_html`, read-only, for a colleague or an appendix. Every text a model or a user wrote is put into the page
as data (`textContent`), never as markup.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from popalign.contrasts import STRATEGIES, StrategyContext
from popalign.conversations import from_chat, transcript
from popalign.dataset.card import write_review
from popalign.dataset.flags import MARKS, Flag, Flags, check_reader, clean_note, pair_digest, read_flags, write_flags
from popalign.dataset.folder import Manifest, claimed, open_manifest
from popalign.dataset.rows import iter_rows
from popalign.errors import ConfigError, PopAlignError
from popalign.extras import require
from popalign.prompts import Instruction
from popalign.styles import Styles
from popalign.templates import TemplateSet

PAGE = Path(__file__).with_name("review_page.html")
#: Where the page's data goes: a JSON script block, its `<` written as `\u003c` so no text can end the block.
_DATA_MARK = "/*POPALIGN_REVIEW_DATA*/null"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_reader() -> str:
    """The reader a review is saved under when none is named: the login name where it is a valid one."""
    try:
        return check_reader(getpass.getuser())
    except (ConfigError, OSError, KeyError):
        return "reader"


@dataclass
class ReviewData:
    """A build's pairs as the page reads them, with the flags on them, and what the page may do."""

    folder: Path
    manifest: Manifest
    rows: dict[str, list[dict[str, Any]]]

    @classmethod
    def load(cls, folder: Path) -> ReviewData:
        """Every config's rows of the build at `folder`.

        Raises:
            NotABuildError: `folder` holds no build.
            TamperedBuildError: its flags file is not what popalign wrote.
        """
        manifest = open_manifest(folder)
        read_flags(folder)  # a tampered flags file is refused before the page opens
        rows = {name: list(iter_rows(folder, name)) for name, config in manifest.configs.items() if config.rows}
        return cls(folder, manifest, rows)

    def refresh(self) -> None:
        """Read the build again where a command rewrote it since it was read (a rebuild, a score or judge pass)."""
        if open_manifest(self.folder).digests != self.manifest.digests:
            fresh = ReviewData.load(self.folder)
            self.manifest, self.rows = fresh.manifest, fresh.rows

    def page(self, *, reader: str, mode: str, token: str | None = None) -> dict[str, Any]:
        """What the page shows: the build, its strategies (sides, drops, judge and score summaries), every pair with
        what made it and its flags, the reader, and `mode` (`server`: flags are saved; `static`: read-only)."""
        self.refresh()
        flags = read_flags(self.folder)
        context = _context(self.folder, self.manifest)
        reasons = STRATEGIES.drop_reasons()
        strategies = {}
        for name, config in self.manifest.configs.items():
            chosen_side, rejected_side = STRATEGIES[name].sides(self.manifest.styles)
            judged = self.manifest.judge.configs.get(name) if self.manifest.judge else None
            strategies[name] = {
                "description": STRATEGIES[name].description,
                "kind": STRATEGIES[name].kind,
                "chosen_side": chosen_side,
                "rejected_side": rejected_side,
                "rows": config.rows,
                "dropped": [[reason, count, reasons.get(reason, "")] for reason, count in config.dropped.items()],
                "judge_accuracy": judged.accuracy if judged else None,
                "roles": sorted({STRATEGIES[name].chosen_role, STRATEGIES[name].rejected_role}),
            }
        pairs = [_pair(name, row, flags, context) for name, rows in self.rows.items() for row in rows]
        return {
            "build": self.folder.name,
            "mode": mode,
            "reader": reader,
            "token": token,
            "marks": list(MARKS),
            "judge": self.manifest.judge.model if self.manifest.judge else None,
            "scored": self.manifest.score is not None,
            "strategies": strategies,
            "params": self.manifest.params,
            "role_params": self.manifest.role_params,
            "roles": self.manifest.roles,
            "pairs": pairs,
            "stale": _stale(flags, self.rows),
        }

    def flag(self, reader: str, body: Any) -> list[dict[str, Any]]:
        """Save one reader's mark (or take it back: `mark` null) on one pair, given on the pair as it is now;
        return the flags on that pair.

        Raises:
            ConfigError: not a flag of a pair of this build, or the pair changed since it was read.
            NotABuildError: another popalign command holds the folder (a rebuild, say).
        """
        self.refresh()
        if not isinstance(body, dict):
            raise ConfigError("a flag is an object: config, prompt_id, pair, mark, note")
        check_reader(reader)
        config, prompt_id, pair, mark = (body.get(key) for key in ("config", "prompt_id", "pair", "mark"))
        row = next((row for row in self.rows.get(str(config), []) if row["prompt_id"] == prompt_id), None)
        if row is None:
            raise ConfigError(f"no pair {prompt_id!r} in config {config!r} of {self.folder}")
        if pair != pair_digest(row):
            raise ConfigError(f"{config} {prompt_id}: the pair changed since the page was loaded; reload it")
        if mark is not None and mark not in MARKS:
            raise ConfigError(f"mark: expected one of {', '.join(MARKS)} or null, got {mark!r}")
        note = body.get("note") or ""
        if not isinstance(note, str):
            raise ConfigError("note: expected text")
        with claimed(self.folder):  # never beside a command rewriting the folder
            flags = read_flags(self.folder)
            key = (reader, str(config), str(prompt_id))
            if mark is None:
                flags = flags.without(key)
            else:
                flags = flags.with_flag(Flag(reader, str(config), str(prompt_id), pair, mark, clean_note(note)))
            write_flags(self.folder, flags)
            self.manifest = write_review(self.folder, self.rows)
        return _flags_on(flags, str(config), row)


def _context(folder: Path, manifest: Manifest) -> StrategyContext:
    """The strategies' context as the build had it: its own templates, seed and styles."""
    templates = TemplateSet(folder / "templates" if (folder / "templates").is_dir() else None)
    return StrategyContext(
        templates,
        seed=manifest.params.get("seed", 0),
        styles=Styles.from_recorded(manifest.styles),
        prefill=manifest.styles.get("prefix_placement") == "prefill",
    )


def _pair(name: str, row: dict[str, Any], flags: Flags, context: StrategyContext) -> dict[str, Any]:
    """One pair as the page reads it."""
    chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
    return {
        "config": name,
        "prompt_id": row["prompt_id"],
        "pair": pair_digest(row),
        "prompt": [[turn["role"], turn["content"]] for turn in row["prompt"]],
        "chosen": chosen,
        "rejected": rejected,
        "chosen_model": row.get("chosen_model"),
        "rejected_model": row.get("rejected_model"),
        "made": _made(name, row, context),
        "chosen_reasoning": row.get("chosen_reasoning"),
        "rejected_reasoning": row.get("rejected_reasoning"),
        "chosen_thinking": row.get("chosen_thinking"),
        "rejected_thinking": row.get("rejected_thinking"),
        "score": row.get("score"),
        "swapped": bool(row.get("swapped")),
        "judge_verdict": row.get("judge_verdict"),
        "judge_margin": row.get("judge_margin"),
        "ratio": round(len(chosen) / max(1, len(rejected)), 3),
        "flags": _flags_on(flags, name, row),
    }


def _made(name: str, row: dict[str, Any], context: StrategyContext) -> list[str] | None:
    """The prompts each side was asked under (a prompt contrast's x+ and x−, as DLMA scores them), as transcripts;
    None for a strategy whose sides differ by model or by step, not by prompt."""
    scoring = STRATEGIES[name].scoring
    if scoring is None:
        return None
    try:
        positive, negative = scoring(Instruction.from_chat(row["prompt"]), context, row)
    except (PopAlignError, KeyError, ValueError, jinja2.TemplateError):
        return None  # a plugin's prompts this build's templates cannot render: the sides still show
    return [transcript(from_chat(chat)) for chat in (positive, negative)]


def _flags_on(flags: Flags, config: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every reader's flag on one pair, each marked stale where it was given on other answers."""
    digest = pair_digest(row)
    return [
        {"reader": flag.reader, "mark": flag.mark, "note": flag.note, "stale": flag.pair != digest}
        for flag in flags.flags
        if flag.config == config and flag.prompt_id == row["prompt_id"]
    ]


def _stale(flags: Flags, rows: dict[str, list[dict[str, Any]]]) -> int:
    """Flags on pairs the build no longer has (a rebuild dropped them)."""
    present = {(name, row["prompt_id"]) for name, config_rows in rows.items() for row in config_rows}
    return sum((flag.config, flag.prompt_id) not in present for flag in flags.flags)


def render_page(data: dict[str, Any]) -> str:
    """The page with `data` in it: one HTML file, nothing fetched from anywhere."""
    text = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace("\u2028", "\\u2028")
    return PAGE.read_text(encoding="utf-8").replace(_DATA_MARK, text.replace("\u2029", "\\u2029"))


def write_html(folder: Path, path: Path, *, reader: str) -> int:
    """Write the review of the build at `folder` as one read-only page to `path`; return the pairs in it."""
    data = ReviewData.load(folder).page(reader=reader, mode="static")
    path.write_text(render_page(data), encoding="utf-8")
    return len(data["pairs"])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (port 0: any free one).

    Raises:
        ConfigError: the port is in use, or the address cannot be bound.
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        reason = "in use" if err.errno in (98, 48) else err.strerror
        raise ConfigError(f"--port {port}: cannot listen on {host} ({reason}); pick another with --port") from err
    sock.listen(64)
    return sock


def needs_token(host: str) -> bool:
    """Whether a page bound to `host` is reachable from other machines, and so asks for the token in its URL."""
    if host in _LOOPBACK:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def review_app(data: ReviewData, *, reader: str, token: str | None) -> Any:
    """The page's server: `GET /` the page, `POST /api/flag` one flag; with a token, every request must carry it
    (`?token=` or the `X-Popalign-Token` header)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    lock = threading.Lock()

    def allowed(request: Request) -> bool:
        given = request.query_params.get("token") or request.headers.get("x-popalign-token") or ""
        return token is None or secrets.compare_digest(given, token)

    def page(request: Request) -> Any:
        if not allowed(request):
            return PlainTextResponse("this page needs the token printed with its URL", status_code=403)
        who = request.query_params.get("reader") or reader
        try:
            check_reader(who)
        except ConfigError as err:
            return PlainTextResponse(str(err), status_code=400)
        with lock:
            html = render_page(data.page(reader=who, mode="server", token=token))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def flag(request: Request) -> Any:
        if not allowed(request):
            return JSONResponse({"error": "this page needs the token printed with its URL"}, status_code=403)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "a flag is JSON"}, status_code=400)
        who = body.get("reader", reader) if isinstance(body, dict) else reader
        try:
            with lock:
                flags = data.flag(who, body)
        except (ConfigError, PopAlignError) as err:
            return JSONResponse({"error": str(err)}, status_code=409 if "changed" in str(err) else 400)
        return JSONResponse({"flags": flags})

    return Starlette(routes=[Route("/", page), Route("/api/flag", flag, methods=["POST"])])


def serve(folder: Path, *, host: str, port: int, reader: str, announce: Callable[[str], None] = print) -> None:
    """Serve the review page of the build at `folder` until interrupted, announcing its URL first."""
    require("review", "popalign review's page server")
    import uvicorn

    data = ReviewData.load(folder)
    sock = bind(host, port)
    token = secrets.token_urlsafe(16) if needs_token(host) else None
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    announce(f"reviewing {folder} ({sum(len(rows) for rows in data.rows.values())} pairs) as {reader}: {url}")
    config = uvicorn.Config(review_app(data, reader=reader, token=token), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
