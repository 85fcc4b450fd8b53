"""What a user sends to an agent: text and media parts, and conversions into them.

A message is a list of :class:`Part`: :class:`TextPart` for text and the :class:`Media` kinds
:class:`Image`, :class:`Document`, :class:`Audio` and :class:`Video` for bytes with a MIME type.
:func:`normalize` turns whatever a user passes (a string, bytes, a path, a pandas DataFrame, a
matplotlib figure, a PIL image, a numpy array, or a list of those) into that list.

Every media part has a MIME type from :data:`ALLOWED_MIME_TYPES` (what Gemini, OpenAI and
Anthropic accept between them) and is at most :func:`max_attachment_bytes` large (20 MiB unless
``AGENT_MAGICS_MAX_ATTACHMENT_MB`` or ``max_bytes=`` says otherwise). Anything else raises
:class:`~agent_magics.errors.ContentError` with one line saying what to do.

This module imports no heavy library: pandas, numpy, matplotlib and PIL objects are recognised
by their class names and only used through their own methods.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, ContentError
from .types import Text as _TextChunk

__all__ = [
    "ALLOWED_MIME_TYPES",
    "MAX_ATTACHMENT_BYTES",
    "MAX_ATTACHMENT_ENV_VAR",
    "MAX_TABLE_COLUMNS",
    "MAX_TABLE_ROWS",
    "Audio",
    "Document",
    "Image",
    "Media",
    "Part",
    "TextPart",
    "Video",
    "as_text",
    "format_size",
    "max_attachment_bytes",
    "normalize",
    "sniff_mime_type",
    "to_part",
]

#: MIME types a media part may have: what Gemini, OpenAI and Anthropic accept between them.
ALLOWED_MIME_TYPES: frozenset[str] = frozenset({
    # images
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/heic", "image/heif",
    # documents
    "application/pdf", "text/plain", "text/csv", "text/markdown", "text/html", "text/xml",
    "text/x-python", "text/tab-separated-values", "application/json", "application/xml",
    # audio
    "audio/wav", "audio/mpeg", "audio/ogg", "audio/flac", "audio/aac", "audio/aiff",
    # video
    "video/mp4", "video/webm", "video/quicktime", "video/mpeg", "video/3gpp",
})

#: Default largest attachment, in bytes (20 MiB, the inline limit of the providers' APIs).
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024

#: Environment variable overriding :data:`MAX_ATTACHMENT_BYTES`, in MiB; read at call time.
MAX_ATTACHMENT_ENV_VAR = "AGENT_MAGICS_MAX_ATTACHMENT_MB"

#: At most this many rows of a DataFrame, Series or array are sent (a note says so).
MAX_TABLE_ROWS = 1000

#: At most this many columns of a DataFrame or 2-D array are sent (a note says so).
MAX_TABLE_COLUMNS = 100

# Other spellings of allowed types.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-pdf": "application/pdf",
    "text/x-markdown": "text/markdown",
    "text/x-csv": "text/csv",
    "application/csv": "text/csv",
    "text/json": "application/json",
    "text/x-script.python": "text/x-python",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "audio/x-flac": "audio/flac",
    "audio/x-aac": "audio/aac",
    "audio/x-aiff": "audio/aiff",
    "audio/vorbis": "audio/ogg",
    "video/mov": "video/quicktime",
    "video/x-quicktime": "video/quicktime",
    "video/mpg": "video/mpeg",
    "video/3gp": "video/3gpp",
}

# Extensions whose type the system's mimetypes database may not know (or knows differently).
_EXTENSION_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif",
    ".pdf": "application/pdf", ".txt": "text/plain", ".csv": "text/csv",
    ".tsv": "text/tab-separated-values", ".md": "text/markdown", ".markdown": "text/markdown",
    ".html": "text/html", ".htm": "text/html", ".json": "application/json",
    ".xml": "application/xml", ".py": "text/x-python",
    ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg",
    ".opus": "audio/ogg", ".flac": "audio/flac", ".aac": "audio/aac", ".aif": "audio/aiff",
    ".aiff": "audio/aiff", ".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm",
    ".mov": "video/quicktime", ".mpeg": "video/mpeg", ".mpg": "video/mpeg",
    ".3gp": "video/3gpp",
}

# Signatures that say "a container", where a file's extension says more (a .docx is a zip).
_CONTAINERS = {"application/zip", "application/gzip"}


# -- sizes and limits -------------------------------------------------------------------------

def format_size(n: int) -> str:
    """``n`` bytes for people: ``512 B``, ``12.3 KiB``, ``20.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def max_attachment_bytes() -> int:
    """The attachment size limit now: ``AGENT_MAGICS_MAX_ATTACHMENT_MB`` (MiB) or 20 MiB."""
    raw = os.environ.get(MAX_ATTACHMENT_ENV_VAR, "").strip()
    if not raw:
        return MAX_ATTACHMENT_BYTES
    try:
        mib = float(raw)
    except ValueError:
        mib = -1.0
    if not mib > 0 or mib == float("inf"):
        raise ConfigError(f"{MAX_ATTACHMENT_ENV_VAR}={raw!r} is not a positive number of MiB "
                          f"(e.g. {MAX_ATTACHMENT_ENV_VAR}=50)")
    return int(mib * 1024 * 1024)


def _limit(max_bytes: int | None) -> int:
    if max_bytes is None:
        return max_attachment_bytes()
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ContentError(f"max_bytes must be a positive int, got {max_bytes!r}")
    return max_bytes


def _check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        suggestion = max(1, -(-size // (1024 * 1024)))
        raise ContentError(
            f"{what} is {format_size(size)} ({size:,} bytes), over the {format_size(limit)} "
            f"attachment limit; pass max_bytes={size} or set "
            f"{MAX_ATTACHMENT_ENV_VAR}={suggestion} to allow it")


def _what(name: str | None, default: str = "attachment") -> str:
    return f"{default} {name!r}" if name else default


# -- MIME types -------------------------------------------------------------------------------

def _allowed_line() -> str:
    return ", ".join(sorted(ALLOWED_MIME_TYPES))


def _normalize_mime(mime_type: str) -> str:
    base = mime_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def _check_allowed(mime_type: str, name: str | None = None) -> None:
    if mime_type not in ALLOWED_MIME_TYPES:
        of = f" ({name})" if name else ""
        raise ContentError(f"unsupported content type {mime_type!r}{of}; "
                           f"allowed: {_allowed_line()}")


def _sniff_binary(data: bytes) -> str | None:
    """The MIME type a file signature (magic bytes) names, if any."""
    head = bytes(data[:128])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return {b"WEBP": "image/webp", b"WAVE": "audio/wav",
                b"AVI ": "video/x-msvideo"}.get(head[8:12], "application/octet-stream")
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"ID3"):
        return "audio/mpeg"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "video/ogg" if b"theora" in head else "audio/ogg"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "audio/aiff"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in (b"heic", b"heix", b"heim", b"heis"):
            return "image/heic"
        if brand in (b"mif1", b"msf1"):
            return "image/heif"
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return "audio/mp4"
        if brand.startswith(b"3g"):
            return "video/3gpp"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: WebM or Matroska
        return "video/webm" if b"webm" in head else "video/x-matroska"
    if head.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "video/mpeg"
    if len(head) >= 2 and head[0] == 0xFF:
        second = head[1]
        if second & 0xF6 == 0xF0:  # ADTS frame header
            return "audio/aac"
        if second & 0xE0 == 0xE0 and (second >> 1) & 0x3:  # MPEG audio frame header
            return "audio/mpeg"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "application/zip"
    if head.startswith(b"\x1f\x8b"):
        return "application/gzip"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head.startswith(b"<?xml") and b"<svg" in bytes(data[:1024]):
        return "image/svg+xml"
    return None


_CONTROL_OK = set("\t\n\r\f\v\x1b")


def _sniff_text(data: bytes) -> str | None:
    """``text/plain`` (or HTML / JSON) when ``data`` is UTF-8 text, else ``None``."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ord(c) < 32 and c not in _CONTROL_OK for c in text[:8192]):
        return None
    body = text.lstrip("\ufeff \t\r\n")
    start = body[:64].lower()
    if start.startswith(("<!doctype html", "<html")):
        return "text/html"
    if body[:1] in ("{", "["):
        try:
            json.loads(body)
        except ValueError:
            pass
        else:
            return "application/json"
    return "text/plain"


def sniff_mime_type(data: bytes | bytearray | memoryview) -> str | None:
    """The MIME type of ``data`` from its magic bytes, else a text type when it is UTF-8 text.

    Returns ``None`` when it is neither (unknown binary). The result may be a type that is not
    in :data:`ALLOWED_MIME_TYPES` (``application/zip``, ``video/x-msvideo``, …).
    """
    return _sniff_binary(data) or _sniff_text(data)


def _extension_type(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in _EXTENSION_TYPES:
        return _EXTENSION_TYPES[suffix]
    guessed, encoding = mimetypes.guess_type(path.name, strict=False)
    if encoding is not None:  # foo.csv.gz is gzip, not CSV
        return "application/gzip" if encoding == "gzip" else "application/octet-stream"
    if guessed is None or guessed == "application/octet-stream":
        return None
    return _normalize_mime(guessed)


def _resolve_type(data: bytes, extension_type: str | None) -> str | None:
    """Pick a file's MIME type from its signature, its extension and its text-ness."""
    signature = _sniff_binary(data)
    if signature and not (signature in _CONTAINERS and extension_type):
        return signature
    if extension_type:
        if extension_type in ALLOWED_MIME_TYPES:
            return extension_type
        if _sniff_text(data) is not None:  # source code, YAML, SVG, …: text is text
            return "text/plain"
        return extension_type
    return _sniff_text(data)


# -- parts ------------------------------------------------------------------------------------

class Part:
    """Base class of everything a message is made of (:class:`TextPart` and :class:`Media`)."""

    __slots__ = ()
    kind: ClassVar[str] = "part"

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class TextPart(Part):
    """Plain text of a message."""

    text: str
    kind: ClassVar[str] = "text"

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise ContentError(f"TextPart needs a str, got {type(self.text).__name__}")

    def describe(self) -> str:
        return self.text

    def __repr__(self) -> str:
        if len(self.text) <= 80:
            return f"TextPart({self.text!r})"
        return f"TextPart({self.text[:77] + '…'!r}, {len(self.text):,} chars)"


@dataclass(frozen=True, repr=False)
class Media(Part):
    """Bytes with a MIME type; built as its subclass :class:`Image`, :class:`Document`,
    :class:`Audio` or :class:`Video`, usually through :meth:`from_bytes` or :meth:`from_file`.
    """

    data: bytes
    mime_type: str
    name: str | None = None
    kind: ClassVar[str] = "media"

    def __post_init__(self):
        data = self.data
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, bytes):
            raise ContentError(f"{type(self).__name__} data must be bytes, "
                               f"got {type(data).__name__}")
        if not data:
            raise ContentError(f"{_what(self.name, type(self).__name__.lower())} is empty")
        if not isinstance(self.mime_type, str):
            raise ContentError(f"mime_type must be a str, got {type(self.mime_type).__name__}")
        mime = _normalize_mime(self.mime_type)
        name = self.name
        if name is not None and not isinstance(name, str):
            name = os.fspath(name) if isinstance(name, os.PathLike) else str(name)
        _check_allowed(mime, name)
        expected = _media_class(mime)
        if type(self) is not expected:
            raise ContentError(f"{mime} is {_KIND_ARTICLE[expected]}, not "
                               f"{_kind_label(type(self))}; use {expected.__name__}(...) "
                               f"or Media.from_bytes(...)")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "mime_type", mime)
        object.__setattr__(self, "name", name)

    # -- views ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Size of the data in bytes."""
        return len(self.data)

    @property
    def is_text(self) -> bool:
        """Whether the data is text (CSV, Markdown, JSON, …) a model can read inline."""
        return self.mime_type.startswith("text/") or self.mime_type in (
            "application/json", "application/xml")

    def decode(self) -> str:
        """The data as text (UTF-8, undecodable bytes replaced)."""
        return self.data.decode("utf-8", errors="replace")

    def to_base64(self) -> str:
        """The data base64-encoded, as ASCII text."""
        return base64.b64encode(self.data).decode("ascii")

    def to_data_url(self) -> str:
        """A ``data:`` URL of the data (what OpenAI's image inputs take)."""
        return f"data:{self.mime_type};base64,{self.to_base64()}"

    def describe(self) -> str:
        """One line for history and text-only backends: ``[image/png plot.png 12.3 KiB]``."""
        name = f" {self.name}" if self.name else ""
        return f"[{self.mime_type}{name} {format_size(self.size)}]"

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"{type(self).__name__}({self.mime_type}, {format_size(self.size)}{name})"

    # -- constructors --------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, mime_type: str | None = None, *,
                   name: str | None = None, max_bytes: int | None = None) -> Media:
        """A part of the right kind for ``data``.

        ``mime_type`` defaults to what the data's magic bytes say (PNG, JPEG, GIF, WebP, PDF,
        WAV, MP3, OGG, FLAC, MP4, WebM, …), else ``text/plain`` / JSON / HTML for UTF-8 text.
        Called on a subclass (``Image.from_bytes``) the data must be of that kind.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            hint = "; use TextPart for text" if isinstance(data, str) else ""
            raise ContentError(f"from_bytes needs bytes, got {type(data).__name__}{hint}")
        data = bytes(data)
        _check_size(len(data), _limit(max_bytes), _what(name))
        if mime_type is None:
            mime = sniff_mime_type(data)
            if mime is None:
                raise ContentError(
                    f"cannot tell the type of {_what(name, 'these bytes')} "
                    f"({format_size(len(data))}, no known file signature and not UTF-8 text); "
                    f"pass mime_type=, one of: {_allowed_line()}")
        else:
            mime = _normalize_mime(mime_type)
        return cls._build(data, mime, name)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], mime_type: str | None = None, *,
                  name: str | None = None, max_bytes: int | None = None) -> Media:
        """A part of the right kind for the file at ``path`` (named after the file).

        The size is checked (``os.stat``) before anything is read. The MIME type comes from
        ``mime_type``, else the file's signature, else its extension, else its text-ness.
        """
        p = Path(os.fspath(path)).expanduser()
        display = name or p.name or str(p)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise ContentError(f"no such file: {str(p)!r}") from None
        except OSError as exc:
            raise ContentError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
        if not p.is_file():
            raise ContentError(f"not a regular file: {str(p)!r}")
        limit = _limit(max_bytes)
        _check_size(st.st_size, limit, f"file {display!r}")
        try:
            with open(p, "rb") as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            raise ContentError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
        _check_size(len(data), limit, f"file {display!r}")  # it grew since stat
        if not data:
            raise ContentError(f"file {display!r} is empty")
        if mime_type is not None:
            mime = _normalize_mime(mime_type)
        else:
            mime = _resolve_type(data, _extension_type(p))
            if mime is None:
                raise ContentError(
                    f"cannot tell the type of file {display!r} (unknown extension, no known "
                    f"file signature, not UTF-8 text); pass mime_type=, one of: "
                    f"{_allowed_line()}")
        return cls._build(data, mime, name or p.name or None)

    @classmethod
    def _build(cls, data: bytes, mime: str, name: str | None) -> Media:
        _check_allowed(mime, name)
        target = _media_class(mime)
        if cls is not Media and not issubclass(target, cls):
            label = f" {name!r}" if name else ""
            raise ContentError(f"{cls.__name__}.from_*: {mime}{label} is "
                               f"{_KIND_ARTICLE[target]}, not {_kind_label(cls)}; use "
                               f"{target.__name__}.from_bytes/from_file or Media.from_*")
        return target(data, mime, name)


@dataclass(frozen=True, repr=False)
class Image(Media):
    """An image (PNG, JPEG, GIF, WebP, HEIC/HEIF)."""

    kind: ClassVar[str] = "image"


@dataclass(frozen=True, repr=False)
class Document(Media):
    """A document: PDF, or text such as plain text, CSV, Markdown, HTML, JSON."""

    kind: ClassVar[str] = "document"


@dataclass(frozen=True, repr=False)
class Audio(Media):
    """An audio clip (WAV, MP3, OGG, FLAC, AAC, AIFF)."""

    kind: ClassVar[str] = "audio"


@dataclass(frozen=True, repr=False)
class Video(Media):
    """A video (MP4, WebM, QuickTime, MPEG, 3GPP)."""

    kind: ClassVar[str] = "video"


_KIND_ARTICLE: dict[type, str] = {
    Image: "an image", Document: "a document", Audio: "audio", Video: "a video",
}


def _kind_label(cls: type) -> str:
    return _KIND_ARTICLE.get(cls, f"a {cls.__name__}")


def _media_class(mime: str) -> type[Media]:
    major = mime.split("/", 1)[0]
    return {"image": Image, "audio": Audio, "video": Video}.get(major, Document)


# -- conversions ------------------------------------------------------------------------------

def _has_class(obj: Any, module_root: str, names: tuple[str, ...]) -> bool:
    """Whether ``obj``'s class (or a base) is ``module_root.….name`` — no import needed."""
    for klass in type(obj).__mro__:
        module = getattr(klass, "__module__", "") or ""
        if klass.__name__ in names and module.split(".", 1)[0] == module_root:
            return True
    return False


def _with_suffix(name: str, suffix: str) -> str:
    return name if name.lower().endswith(suffix) else f"{name}{suffix}"


def _truncation_note(shown: int, total: int, what: str) -> str:
    return f"# truncated: showing the first {shown:,} of {total:,} {what}\n"


def _fit_table(render, total: int, limit: int, what: str, name: str | None,
               columns: tuple[int, int] | None = None) -> bytes:
    """Render the first rows of a table as CSV text that fits under ``limit`` bytes.

    ``render(n)`` returns the CSV text of the first ``n`` rows; ``columns`` is ``(shown,
    total)`` when ``render`` already keeps only the first columns (a note then says so).
    """
    rows = min(total, MAX_TABLE_ROWS)
    while True:
        text = render(rows)
        if columns is not None and columns[0] < columns[1]:
            text += _truncation_note(columns[0], columns[1], "columns")
        if rows < total:
            text += _truncation_note(rows, total, "rows")
        data = text.encode("utf-8")
        if len(data) <= limit:
            return data
        if rows <= 1:
            _check_size(len(data), limit, f"{what} {name!r}" if name else what)
        rows = max(1, min(rows - 1, int(rows * limit / len(data) * 0.9)))


def _keep_index(frame: Any) -> bool:
    index = frame.index
    if getattr(index, "nlevels", 1) > 1 or index.name is not None:
        return True
    if type(index).__name__ == "RangeIndex":
        return not (index.start == 0 and index.step == 1)
    return True


def _frame_to_document(obj: Any, name: str | None, limit: int) -> Document:
    if _has_class(obj, "pandas", ("Series",)):
        series_name = obj.name
        label = name or (str(series_name) if series_name is not None else "series")
        frame = obj.to_frame() if series_name is not None else obj.to_frame(name="value")
    else:
        frame = obj
        attr_name = getattr(frame, "attrs", {}).get("name")
        label = name or (str(attr_name) if attr_name else "dataframe")
    index = _keep_index(frame)
    width = frame.shape[1]
    frame = frame.iloc[:, :MAX_TABLE_COLUMNS]
    data = _fit_table(lambda n: frame.head(n).to_csv(index=index), len(frame), limit,
                      "DataFrame", label, columns=(frame.shape[1], width))
    if not data.strip():
        data = b"# empty DataFrame\n"
    return Document(data, "text/csv", _with_suffix(label, ".csv"))


def _array_to_document(arr: Any, name: str | None, limit: int) -> Document:
    label = name or "array"
    header = f"# numpy array shape={tuple(arr.shape)} dtype={arr.dtype}\n"
    if arr.ndim == 0:
        return Document((header + f"{arr.item()!r}\n").encode("utf-8"), "text/plain",
                        _with_suffix(label, ".txt"))
    if arr.ndim > 2:
        import numpy as np  # only reached for numpy arrays, so numpy is there

        body = np.array2string(arr, threshold=10_000, separator=", ")
        data = (header + body + "\n").encode("utf-8")
        _check_size(len(data), limit, f"array {label!r}")
        return Document(data, "text/plain", _with_suffix(label, ".txt"))

    names = arr.dtype.names
    width = len(names) if names else (arr.shape[1] if arr.ndim == 2 else 1)
    if names:
        names = names[:MAX_TABLE_COLUMNS]
        arr = arr[list(names)]
    elif arr.ndim == 2:
        arr = arr[:, :MAX_TABLE_COLUMNS]

    def render(n: int) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if names:
            writer.writerow(names)
        for row in arr[:n].tolist():
            writer.writerow(row if isinstance(row, (list, tuple)) else [row])
        return header + buf.getvalue()

    data = _fit_table(render, len(arr), limit, "array", label,
                      columns=(min(width, MAX_TABLE_COLUMNS), width))
    return Document(data, "text/csv", _with_suffix(label, ".csv"))


def _figure_to_image(obj: Any, name: str | None, limit: int) -> Image:
    figure = obj
    for _ in range(8):  # an Axes or SubFigure → its figure, up to the root figure
        if figure is None or hasattr(figure, "savefig"):
            break
        figure = getattr(figure, "figure", None)
    if figure is None or not hasattr(figure, "savefig"):
        raise ContentError(f"this {type(obj).__name__} is not attached to a figure to render")
    buf = io.BytesIO()
    figure.savefig(buf, format="png", bbox_inches="tight")
    label = name or (figure.get_label() if hasattr(figure, "get_label") else "") or "figure"
    return Media.from_bytes(buf.getvalue(), "image/png", name=_with_suffix(label, ".png"),
                            max_bytes=limit)


def _pil_to_image(obj: Any, name: str | None, limit: int) -> Image:
    img = obj
    if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    filename = getattr(obj, "filename", "") or ""
    label = name or (Path(filename).stem if filename else "image")
    return Media.from_bytes(buf.getvalue(), "image/png", name=_with_suffix(label, ".png"),
                            max_bytes=limit)


def _repr_image(obj: Any, name: str | None, limit: int) -> Image | None:
    for method, mime in (("_repr_png_", "image/png"), ("_repr_jpeg_", "image/jpeg")):
        func = getattr(obj, method, None)
        if not callable(func):
            continue
        result = func()
        if isinstance(result, tuple):  # (data, metadata)
            result = result[0] if result else None
        if result is None:
            continue
        if isinstance(result, str):
            result = base64.b64decode(result)
        suffix = ".png" if mime == "image/png" else ".jpg"
        label = _with_suffix(name, suffix) if name else None
        return Media.from_bytes(result, mime, name=label, max_bytes=limit)
    return None


_SUPPORTED = ("str, bytes, pathlib.Path, a content part (TextPart, Image, Document, Audio, "
              "Video), a pandas DataFrame or Series, a matplotlib Figure or Axes, a PIL image, "
              "a numpy array, or an object with _repr_png_")


def to_part(obj: Any, *, name: str | None = None, max_bytes: int | None = None) -> Part:
    """Convert one object into a :class:`Part`.

    - ``str`` → :class:`TextPart` (a string is always text, never a path)
    - ``bytes`` / ``bytearray`` / ``memoryview`` → media of the sniffed type
    - ``os.PathLike`` (``pathlib.Path``) → :meth:`Media.from_file`
    - pandas ``DataFrame`` / ``Series`` → CSV :class:`Document` (first
      :data:`MAX_TABLE_ROWS` rows, fewer if needed to stay under the size limit, and first
      :data:`MAX_TABLE_COLUMNS` columns; a note at the end says what was cut)
    - matplotlib ``Figure`` / ``Axes`` → PNG :class:`Image`; PIL image → PNG :class:`Image`
    - numpy array → CSV text :class:`Document`; an object with ``_repr_png_`` → :class:`Image`
    - a :class:`Part` → itself

    ``name`` names the resulting part (e.g. the variable a DataFrame came from).
    """
    if isinstance(obj, Part):
        return obj
    if isinstance(obj, str):
        return TextPart(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return Media.from_bytes(obj, name=name, max_bytes=max_bytes)
    if isinstance(obj, os.PathLike):
        return Media.from_file(obj, name=name, max_bytes=max_bytes)
    if isinstance(obj, _TextChunk):
        return TextPart(obj.text)
    if _has_class(obj, "pandas", ("DataFrame", "Series")):
        return _frame_to_document(obj, name, _limit(max_bytes))
    if _has_class(obj, "matplotlib", ("Figure", "SubFigure", "FigureBase", "_AxesBase",
                                      "Axes")):
        return _figure_to_image(obj, name, _limit(max_bytes))
    if _has_class(obj, "PIL", ("Image",)) and hasattr(obj, "save") and hasattr(obj, "mode"):
        return _pil_to_image(obj, name, _limit(max_bytes))
    if _has_class(obj, "numpy", ("ndarray",)):
        return _array_to_document(obj, name, _limit(max_bytes))
    image = _repr_image(obj, name, _limit(max_bytes))
    if image is not None:
        return image
    kind = type(obj)
    raise ContentError(f"cannot send a {kind.__module__}.{kind.__qualname__}; "
                       f"supported: {_SUPPORTED}")


def normalize(content: Any, *, max_bytes: int | None = None) -> list[Part]:
    """``content`` as a list of parts: a string, one part or object, or a list/tuple of them.

    A list may hold lists (flattened one level). ``None`` and empty lists are rejected. Empty
    text pieces are dropped from a multipart message that has other parts.
    """
    if content is None:
        raise ContentError("no content to send: pass a string, a part, or a list of them")
    if not isinstance(content, (list, tuple)):
        return [to_part(content, max_bytes=max_bytes)]
    parts: list[Part] = []
    for item in content:
        if isinstance(item, (list, tuple)):
            for inner in item:
                if isinstance(inner, (list, tuple)):
                    raise ContentError("content is nested too deeply: use a list of parts, "
                                       "or a list of lists of parts")
                if inner is None:
                    raise ContentError("None in the content list: remove it")
                parts.append(to_part(inner, max_bytes=max_bytes))
        elif item is None:
            raise ContentError("None in the content list: remove it")
        else:
            parts.append(to_part(item, max_bytes=max_bytes))
    if not parts:
        raise ContentError("no content to send: the list is empty")
    if len(parts) > 1:
        kept = [p for p in parts if not (isinstance(p, TextPart) and not p.text.strip())]
        parts = kept or parts[:1]
    return parts


def as_text(parts: Any, *, inline_documents: bool = False) -> str:
    """The text of ``parts``: text as is, media as their :meth:`Media.describe` line.

    With ``inline_documents=True`` a text document (CSV, Markdown, JSON, …) is followed by its
    content, for backends that only take text. Accepts anything :func:`normalize` does.
    """
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, Part) for p in parts):
        parts = normalize(parts)
    lines: list[str] = []
    for part in parts:
        if isinstance(part, Media) and inline_documents and part.is_text:
            lines.append(f"{part.describe()}\n{part.decode().rstrip()}")
        else:
            lines.append(part.describe())
    return "\n".join(lines)
