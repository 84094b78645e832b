"""The kit: a one-page A4 PDF holding the QR code and the account code."""

from __future__ import annotations

import base64
import binascii
import logging
import mimetypes
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import weasyprint
import weasyprint.text.fonts
import weasyprint.urls

from pipeline.errors import FetchRefusedError, RenderError
from pipeline.render.context import EmailContext
from pipeline.render.env import KIT_HTML, Templates

__all__ = ["KIT_CSS", "KitRenderer", "LockedURLFetcher"]

logger = logging.getLogger("pipeline.render.kit")

KIT_CSS = "kit.css"


class LockedURLFetcher(weasyprint.urls.URLFetcher):  # type: ignore[misc]
    """A URL fetcher that serves data: URIs and files inside one folder, nothing else.

    The stock fetcher opens any file:// path and any http(s) or ftp URL, which
    would let a template read local files or reach the network. This one never
    opens a socket: every other URL is refused, recorded in `refused`, and
    raised. With `fail_on_errors` WeasyPrint turns the refusal into a fatal
    error instead of logging it and rendering on without the resource.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(
            allowed_protocols=("file", "data"),
            allow_redirects=False,
            fail_on_errors=True,
        )
        self.root = root.resolve()
        self.refused: list[str] = []

    def fetch(
        self, url: str, headers: dict[str, str] | None = None
    ) -> weasyprint.urls.URLFetcherResponse:
        """Serve `url` if it is a data: URI or a file inside `root`; else refuse."""
        scheme = url.partition(":")[0].lower()
        if scheme == "data":
            return self._fetch_data(url)
        if scheme == "file" and (path := self._inside_root(url)) is not None:
            return self._fetch_file(url, path)

        self.refused.append(url)
        logger.info("refused to fetch %r: outside '%s'", url, self.root)
        raise FetchRefusedError(f"refused to fetch '{url}'")

    def open(
        self, url: Any, data: object = None, timeout: object = None
    ) -> weasyprint.urls.URLFetcherResponse:
        """Route urllib-style calls through `fetch` too; nothing bypasses the lock."""
        full_url = url.full_url if isinstance(url, urllib.request.Request) else url
        return self.fetch(str(full_url))

    def raise_if_refused(self) -> None:
        """Raise FetchRefusedError if any URL was refused, even one WeasyPrint hid."""
        if not self.refused:
            return
        urls = ", ".join(f"'{url}'" for url in self.refused)
        noun = "a URL" if len(self.refused) == 1 else "URLs"
        raise FetchRefusedError(
            f"template asked for {noun} outside the template folder: {urls};"
            f" only data: URIs and files under '{self.root}' are served"
        )

    def _inside_root(self, url: str) -> Path | None:
        """The local path of a file: URL if it resolves inside `root`, else None."""
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None

        # resolve() follows symlinks and "..", so neither can lead outside root.
        path = Path(urllib.request.url2pathname(parts.path)).resolve()
        return path if path.is_relative_to(self.root) else None

    def _fetch_file(self, url: str, path: Path) -> weasyprint.urls.URLFetcherResponse:
        if not path.is_file():
            raise RenderError(f"kit resource not found: '{url}'")

        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return weasyprint.urls.URLFetcherResponse(
            path.as_uri(), path.read_bytes(), {"Content-Type": content_type}
        )

    def _fetch_data(self, url: str) -> weasyprint.urls.URLFetcherResponse:
        content_type, body = _decode_data_uri(url)
        return weasyprint.urls.URLFetcherResponse(
            url, body, {"Content-Type": content_type}
        )


class KitRenderer:
    """Renders kits; make one per process and reuse it for every account.

    The font configuration and the parsed kit.css (with its fonts) are built
    once; a fresh pair per document costs about 35 ms more on the default kit,
    which takes about 150 ms warm. kit.html.j2 comes from the user folder if it
    has one, else from the default theme; kit.css, fonts and images resolve in
    the folder kit.html.j2 came from, the only folder the URL fetcher serves.
    Not thread-safe: WeasyPrint's font configuration is shared state.
    """

    def __init__(self, templates: Templates | None = None) -> None:
        self.templates = templates if templates is not None else Templates()
        self.folder = self.templates.origin(KIT_HTML).resolve()
        self.base_url = self.folder.as_uri() + "/"
        self.font_config = weasyprint.text.fonts.FontConfiguration()
        self.stylesheets = self._load_stylesheets()

    def render(self, ctx: EmailContext, qr_svg: str) -> bytes:
        """The kit PDF of one account; RenderError unless it is exactly one page."""
        html = self.templates.kit_html(ctx, qr_svg)
        fetcher = LockedURLFetcher(self.folder)

        try:
            document = weasyprint.HTML(
                string=html, base_url=self.base_url, url_fetcher=fetcher
            ).render(font_config=self.font_config, stylesheets=self.stylesheets)
            fetcher.raise_if_refused()
            _check_one_page(ctx, len(document.pages))
            _set_metadata(document.metadata, ctx)
            pdf: bytes = document.write_pdf()
        except weasyprint.urls.FatalURLFetchingError as error:
            # WeasyPrint wraps the fetcher's error; the refusal list says more.
            try:
                fetcher.raise_if_refused()
            except FetchRefusedError as refusal:
                raise refusal from error.__cause__
            raise RenderError(
                f"kit of account {ctx.account_id}: {error.__cause__ or error}"
            ) from error
        except RenderError:
            raise
        except Exception as error:
            raise RenderError(
                f"kit of account {ctx.account_id}: WeasyPrint failed: "
                f"{type(error).__name__}: {error}"
            ) from error

        fetcher.raise_if_refused()
        return pdf

    def _load_stylesheets(self) -> list[weasyprint.CSS]:
        """Parse kit.css once, through the locked fetcher, loading its fonts."""
        css_path = self.folder / KIT_CSS
        if not css_path.is_file():
            logger.info("no %s beside %s in '%s'", KIT_CSS, KIT_HTML, self.folder)
            return []

        fetcher = LockedURLFetcher(self.folder)
        try:
            stylesheet = weasyprint.CSS(
                url=css_path.as_uri(),
                url_fetcher=fetcher,
                font_config=self.font_config,
            )
        except weasyprint.urls.FatalURLFetchingError as error:
            try:
                fetcher.raise_if_refused()
            except FetchRefusedError as refusal:
                raise refusal from error.__cause__
            raise RenderError(f"{KIT_CSS}: {error.__cause__ or error}") from error
        fetcher.raise_if_refused()
        return [stylesheet]


def _decode_data_uri(url: str) -> tuple[str, bytes]:
    """The media type and bytes of a data: URI (RFC 2397), decoded in memory."""
    header, comma, data = url.removeprefix("data:").partition(",")
    if not comma:
        raise RenderError(f"malformed data: URI: '{url[:60]}'")

    is_base64 = header.lower().endswith(";base64")
    media_type = header.removesuffix(header[-7:] if is_base64 else "")
    raw = urllib.parse.unquote_to_bytes(data)
    try:
        body = base64.b64decode(raw, validate=False) if is_base64 else raw
    except binascii.Error as error:
        raise RenderError(f"malformed base64 in data: URI: '{url[:60]}'") from error
    return media_type or "text/plain;charset=US-ASCII", body


def _check_one_page(ctx: EmailContext, pages: int) -> None:
    if pages != 1:
        raise RenderError(
            f"kit of account {ctx.account_id} has {pages} pages, not 1: "
            "shorten the kit template or its text"
        )


def _set_metadata(metadata: Any, ctx: EmailContext) -> None:
    """PDF metadata: title and subject from the template's <head> if it has
    them, author, creator and dates always from the account."""
    metadata.title = metadata.title or f"{ctx.product} account kit"
    metadata.authors = [ctx.product]
    metadata.generator = ctx.product
    metadata.description = metadata.description or (
        f"{ctx.product} account kit for {ctx.email}, issued {ctx.issued.isoformat()}"
    )
    metadata.created = ctx.issued.isoformat()
    metadata.modified = ctx.issued.isoformat()
    metadata.lang = ctx.locale
