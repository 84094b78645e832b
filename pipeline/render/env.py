"""Jinja environments for the bundled theme and for user template folders."""

from __future__ import annotations

import logging
import re
import textwrap
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

import jinja2
import jinja2.exceptions
import jinja2.sandbox
from markupsafe import Markup

from pipeline.errors import RenderError, UsageError
from pipeline.render.context import EmailContext

__all__ = [
    "DEFAULT_TEMPLATES",
    "EMAIL_HTML",
    "EMAIL_TEXT",
    "HTML_SIZE_WARNING",
    "KIT_HTML",
    "Templates",
    "wrap_text",
]

logger = logging.getLogger("pipeline.render.env")

# templates/ sits beside pipeline/ in the source tree.
DEFAULT_TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "default"

EMAIL_HTML = "email.html.j2"
EMAIL_TEXT = "email.txt.j2"
KIT_HTML = "kit.html.j2"

# Gmail clips HTML bodies above about 102 KB, some already near 99 KB.
HTML_SIZE_WARNING = 90 * 1024

_HTML_SUFFIXES = (".html.j2", ".htm.j2", ".xml.j2", ".svg.j2", ".html", ".htm")


# The indent, bullet or number that starts a list line: "- ", "2. ", "    ".
_LINE_LEAD = re.compile(r"\s*(?:[-*]\s+|\d+\.\s+)?")


def wrap_text(text: str, width: int = 76) -> str:
    """Fold each line of plain text to `width` columns, keeping line breaks.

    Continuation lines of an indented or list line line up under its text.
    Words are never split, so an address longer than `width` stays whole.
    """
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            lines.append("")
            continue
        lead = _LINE_LEAD.match(line)
        indent = " " * (lead.end() if lead else 0)
        lines.extend(
            textwrap.wrap(
                line,
                width,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


class _ConfinedLoader(jinja2.FileSystemLoader):
    """A FileSystemLoader that refuses files resolving outside its folder.

    Jinja2 already refuses `..` in names, but follows symlinks: a user folder
    could link to /etc/passwd and include it. The URL fetcher of the kit makes
    the same check for CSS, fonts and images.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root = root.resolve()

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if not Path(filename).resolve().is_relative_to(self.root):
            raise RenderError(
                f"template {template!r} resolves outside its folder; links out of "
                "a template folder are refused"
            )
        return source, filename, uptodate


def _autoescape(name: str | None) -> bool:
    """Escape HTML-like templates; leave plain-text ones (.txt.j2) as written."""
    return name is not None and name.lower().endswith(_HTML_SUFFIXES)


class Templates:
    """The templates of one run: a user folder over the default theme, or the theme.

    A user folder is untrusted: its templates run in Jinja's immutable sandbox.
    Any template it lacks comes from the default theme. Both kinds use
    StrictUndefined, so a misspelt variable fails the render instead of
    printing nothing.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.sandboxed = folder is not None
        if folder is None:
            roots = [DEFAULT_TEMPLATES]
        else:
            if not folder.is_dir():
                raise UsageError(f"template folder not found: '{folder}'")
            roots = [folder.resolve(), DEFAULT_TEMPLATES]
        self.roots: tuple[Path, ...] = tuple(roots)
        self.folder = roots[0]

        environment_class = (
            jinja2.sandbox.ImmutableSandboxedEnvironment
            if self.sandboxed
            else jinja2.Environment
        )
        self.environment = environment_class(
            loader=jinja2.ChoiceLoader([_ConfinedLoader(root) for root in self.roots]),
            autoescape=_autoescape,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        self.environment.filters["wrap_text"] = wrap_text

    def origin(self, name: str) -> Path:
        """The folder that holds the template `name` this run uses."""
        for root in self.roots:
            if (root / name).is_file():
                return root
        raise RenderError(f"template not found: '{name}' (looked in {self._where()})")

    def render(self, name: str, variables: Mapping[str, object]) -> str:
        """Render template `name`; a failure is a RenderError naming file and line."""
        try:
            template = self.environment.get_template(name)
            return template.render(variables)
        except RenderError:
            raise
        except jinja2.TemplateNotFound as error:
            raise RenderError(
                f"template not found: '{error.name}' (looked in {self._where()})"
            ) from error
        except jinja2.TemplateSyntaxError as error:
            where = error.filename or error.name or name
            raise RenderError(
                f'template "{where}", line {error.lineno}: '
                f"syntax error: {error.message}"
            ) from error
        except Exception as error:
            where, line = self._locate(error, name)
            kind = "refused by the sandbox" if _is_security(error) else "failed"
            raise RenderError(
                f'template "{where}", line {line}: {kind}: '
                f"{type(error).__name__}: {error}"
            ) from error

    def email_html(self, ctx: EmailContext, qr_cid: str) -> str:
        """The HTML body; the QR is an <img> that points at `cid:{qr_cid}`."""
        html = self.render(EMAIL_HTML, {**ctx.template_vars(), "qr_cid": qr_cid})

        size = len(html.encode())
        if size > HTML_SIZE_WARNING:
            logger.warning(
                "email HTML of account %s is %d bytes; Gmail clips near 100 KB",
                ctx.account_id,
                size,
            )
        return html

    def email_text(self, ctx: EmailContext) -> str:
        """The plain-text body."""
        return self.render(EMAIL_TEXT, ctx.template_vars())

    def kit_html(self, ctx: EmailContext, qr_svg: str) -> str:
        """The kit's HTML; `qr_svg` is trusted markup from `qr.qr_svg`."""
        # qr_svg is built by qr.qr_svg from numbers only, never from user text.
        svg = Markup(qr_svg)  # noqa: S704
        return self.render(KIT_HTML, {**ctx.template_vars(), "qr_svg": svg})

    def _where(self) -> str:
        return ", ".join(f"'{root}'" for root in self.roots)

    def _locate(self, error: BaseException, name: str) -> tuple[str, int | str]:
        """The template file and line a runtime error came from.

        Jinja rewrites tracebacks so template frames carry the template's own
        file name and line; the innermost such frame is where it failed.
        """
        found: tuple[str, int | str] = (name, "?")
        for frame in traceback.extract_tb(error.__traceback__):
            filename = Path(frame.filename)
            if any(filename.is_relative_to(root) for root in self.roots):
                found = (frame.filename, frame.lineno or "?")
        return found


def _is_security(error: BaseException) -> bool:
    return isinstance(error, jinja2.exceptions.SecurityError)
