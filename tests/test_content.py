"""Tests of agent_magics.content: parts, sniffing, limits and conversions."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from agent_magics import content
from agent_magics.content import (
    ALLOWED_MIME_TYPES,
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENT_ENV_VAR,
    MAX_TABLE_COLUMNS,
    MAX_TABLE_ROWS,
    Audio,
    Document,
    Image,
    Media,
    Part,
    TextPart,
    Video,
    as_text,
    format_size,
    max_attachment_bytes,
    normalize,
    sniff_mime_type,
    to_part,
)
from agent_magics.errors import AgentError, ConfigError, ContentError

PAD = bytes(range(256)) * 2  # binary filler after a header: not UTF-8 text

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06" + PAD
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01" + PAD
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + PAD
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + PAD
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + PAD
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + PAD
MP3_ID3 = b"ID3\x04\x00\x00\x00\x00\x00\x21" + PAD
MP3_FRAME = b"\xff\xfb\x90\x64\x00\x00" + PAD
AAC = b"\xff\xf1\x50\x80\x02\x1f\xfc" + PAD
OGG = b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01vorbis" + PAD
FLAC = b"fLaC\x00\x00\x00\x22\x10\x00" + PAD
AIFF = b"FORM\x00\x00\x10\x00AIFFCOMM" + PAD
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + PAD
MOV = b"\x00\x00\x00\x14ftypqt  \x20\x05\x03\x00qt  " + PAD
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + PAD
WEBM = (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81"
        b"\x08\x42\x82\x84webm\x42\x87\x81\x04" + PAD)
MKV = (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04\x42\xf3\x81"
       b"\x08\x42\x82\x88matroska" + PAD)
ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + PAD
AVI = b"RIFF\x24\x00\x00\x00AVI LIST" + PAD


def real_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x01" * 800)
    return buf.getvalue()


# -- sniffing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "mime", "cls"), [
    (PNG, "image/png", Image),
    (JPEG, "image/jpeg", Image),
    (GIF, "image/gif", Image),
    (b"GIF87a\x01\x00\x01\x00" + PAD, "image/gif", Image),
    (WEBP, "image/webp", Image),
    (HEIC, "image/heic", Image),
    (PDF, "application/pdf", Document),
    (WAV, "audio/wav", Audio),
    (MP3_ID3, "audio/mpeg", Audio),
    (MP3_FRAME, "audio/mpeg", Audio),
    (AAC, "audio/aac", Audio),
    (OGG, "audio/ogg", Audio),
    (FLAC, "audio/flac", Audio),
    (AIFF, "audio/aiff", Audio),
    (MP4, "video/mp4", Video),
    (MOV, "video/quicktime", Video),
    (WEBM, "video/webm", Video),
])
def test_from_bytes_sniffs_magic_bytes(data, mime, cls):
    assert sniff_mime_type(data) == mime
    part = Media.from_bytes(data)
    assert type(part) is cls
    assert part.mime_type == mime
    assert part.data == data
    assert part.size == len(data)
    assert part.name is None
    assert isinstance(part, Part)


def test_real_wav_from_the_wave_module_is_audio():
    part = Media.from_bytes(real_wav(), name="beep.wav")
    assert isinstance(part, Audio)
    assert part.mime_type == "audio/wav"
    assert part.kind == "audio"


@pytest.mark.parametrize(("data", "mime"), [
    (b"hello world\n", "text/plain"),
    ("naïve café ünïcødé\n".encode(), "text/plain"),
    (b"\xef\xbb\xbfwith a BOM", "text/plain"),
    (b'{"a": 1, "b": [1, 2]}', "application/json"),
    (b"  [1, 2, 3]\n", "application/json"),
    (b"{not json at all", "text/plain"),
    (b"<!DOCTYPE html><html><body>x</body></html>", "text/html"),
    (b"<html><p>x</p></html>", "text/html"),
    (b"a,b\n1,2\n", "text/plain"),
])
def test_text_fallbacks(data, mime):
    part = Media.from_bytes(data)
    assert isinstance(part, Document)
    assert part.mime_type == mime
    assert part.is_text


@pytest.mark.parametrize("data", [b"\x00\x01\x02\x03\xfe\xfd" * 10, b"\x01\x02abc\x03", PAD])
def test_unrecognisable_bytes_are_rejected(data):
    assert sniff_mime_type(data) is None
    with pytest.raises(ContentError, match=r"cannot tell the type.*mime_type="):
        Media.from_bytes(data)


@pytest.mark.parametrize(("data", "mime"), [
    (ZIP, "application/zip"), (AVI, "video/x-msvideo"), (MKV, "video/x-matroska"),
])
def test_sniffed_but_unsupported_types_are_rejected_by_name(data, mime):
    assert sniff_mime_type(data) == mime
    with pytest.raises(ContentError, match=f"unsupported content type '{mime}'"):
        Media.from_bytes(data)


def test_explicit_mime_type_wins_and_is_normalised():
    part = Media.from_bytes(b"x,y\n1,2\n", "text/csv; charset=utf-8", name="t.csv")
    assert isinstance(part, Document)
    assert part.mime_type == "text/csv"
    assert Media.from_bytes(JPEG, "image/jpg").mime_type == "image/jpeg"
    assert Media.from_bytes(WAV, "audio/x-wav").mime_type == "audio/wav"
    assert Media.from_bytes(MP3_ID3, "AUDIO/MP3").mime_type == "audio/mpeg"
    assert type(Media.from_bytes(MOV, "video/mov")) is Video


def test_from_bytes_accepts_bytearray_and_memoryview():
    assert Media.from_bytes(bytearray(PNG)).data == PNG
    part = Media.from_bytes(memoryview(PNG))
    assert type(part.data) is bytes
    assert part.data == PNG


def test_from_bytes_rejects_str_and_empty():
    with pytest.raises(ContentError, match="needs bytes, got str; use TextPart"):
        Media.from_bytes("hello")
    with pytest.raises(ContentError, match="empty"):
        Media.from_bytes(b"", "text/plain")


# -- allowlist --------------------------------------------------------------------------------

def test_allowlist_covers_the_providers_types():
    for mime in ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf",
                 "text/plain", "text/csv", "text/markdown", "text/html", "application/json",
                 "audio/wav", "audio/mpeg", "audio/ogg", "audio/flac", "video/mp4",
                 "video/webm", "video/quicktime"):
        assert mime in ALLOWED_MIME_TYPES
    assert "application/zip" not in ALLOWED_MIME_TYPES
    assert "image/svg+xml" not in ALLOWED_MIME_TYPES


def test_allowlist_rejection_is_one_clear_line():
    with pytest.raises(ContentError) as info:
        Media.from_bytes(b"whatever", "application/x-msdownload", name="setup.exe")
    message = str(info.value)
    assert "\n" not in message
    assert "'application/x-msdownload'" in message
    assert "setup.exe" in message
    assert "allowed:" in message
    for mime in ("image/png", "application/pdf", "text/csv", "audio/wav", "video/mp4"):
        assert mime in message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, AgentError)


# -- kinds and constructors -------------------------------------------------------------------

def test_subclass_from_bytes_checks_the_kind():
    assert type(Image.from_bytes(PNG)) is Image
    assert type(Audio.from_bytes(WAV)) is Audio
    assert type(Video.from_bytes(MP4)) is Video
    assert type(Document.from_bytes(PDF)) is Document
    with pytest.raises(ContentError, match=r"application/pdf.*a document, not an image.*Document"):
        Image.from_bytes(PDF)
    with pytest.raises(ContentError, match=r"image/png.*an image, not a document"):
        Document.from_bytes(PNG)
    with pytest.raises(ContentError, match="not audio"):
        Audio.from_bytes(MP4)


def test_image_from_file_on_a_pdf_is_a_kind_mismatch(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(PDF)
    with pytest.raises(ContentError, match=re.escape("report.pdf")):
        Image.from_file(path)
    assert type(Document.from_file(path)) is Document


def test_direct_constructors_validate():
    img = Image(bytearray(PNG), "IMAGE/PNG", name="a.png")
    assert type(img.data) is bytes
    assert img.mime_type == "image/png"
    with pytest.raises(ContentError, match="a document, not an image"):
        Image(PDF, "application/pdf")
    with pytest.raises(ContentError, match="unsupported content type 'image/bmp'"):
        Image(b"BM" + PAD, "image/bmp")
    with pytest.raises(ContentError, match="use Image"):
        Media(PNG, "image/png")
    with pytest.raises(ContentError, match="empty"):
        Document(b"", "text/plain")
    with pytest.raises(ContentError, match="must be bytes"):
        Document("text", "text/plain")
    with pytest.raises(ContentError, match="needs a str"):
        TextPart(b"bytes")


def test_parts_are_frozen_hashable_and_comparable():
    a = Image(PNG, "image/png", "a.png")
    b = Image(PNG, "image/png", "a.png")
    assert a == b
    assert hash(a) == hash(b)
    assert a != Image(PNG, "image/png", "b.png")
    assert len({a, b}) == 1
    assert dataclasses.is_dataclass(a)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.data = b"x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TextPart("x").text = "y"  # type: ignore[misc]


def test_kinds():
    assert TextPart("x").kind == "text"
    assert Image(PNG, "image/png").kind == "image"
    assert Document(PDF, "application/pdf").kind == "document"
    assert Audio(WAV, "audio/wav").kind == "audio"
    assert Video(MP4, "video/mp4").kind == "video"


# -- repr, describe, base64 -------------------------------------------------------------------

def test_repr_and_describe_never_dump_bytes():
    data = b"\x89PNG\r\n\x1a\n" + b"SECRET-PAYLOAD" * 900
    img = Image(data, "image/png", name="plot.png")
    for text in (repr(img), str(img), img.describe(), repr([img]), as_text([img])):
        assert "SECRET" not in text
        assert "\\x89" not in text
        assert "PNG\\r" not in text
    assert repr(img) == "Image(image/png, 12.3 KiB, name='plot.png')"
    assert img.describe() == "[image/png plot.png 12.3 KiB]"
    doc = Document(b"hello", "text/plain")
    assert repr(doc) == "Document(text/plain, 5 B)"
    assert doc.describe() == "[text/plain 5 B]"


def test_textpart_repr_is_short_for_long_text():
    assert repr(TextPart("hi")) == "TextPart('hi')"
    long = TextPart("x" * 5000)
    assert len(repr(long)) < 120
    assert "5,000 chars" in repr(long)


def test_base64_and_data_url():
    img = Image(PNG, "image/png")
    assert base64.b64decode(img.to_base64()) == PNG
    assert img.to_data_url() == "data:image/png;base64," + img.to_base64()


def test_format_size():
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1024) == "1.0 KiB"
    assert format_size(12_600) == "12.3 KiB"
    assert format_size(20 * 1024 * 1024) == "20.0 MiB"
    assert format_size(3 * 1024**3) == "3.0 GiB"


# -- from_file --------------------------------------------------------------------------------

@pytest.mark.parametrize(("filename", "data", "mime", "cls"), [
    ("plot.png", PNG, "image/png", Image),
    ("photo.JPG", JPEG, "image/jpeg", Image),
    ("anim.gif", GIF, "image/gif", Image),
    ("pic.webp", WEBP, "image/webp", Image),
    ("paper.pdf", PDF, "application/pdf", Document),
    ("notes.txt", b"plain notes\n", "text/plain", Document),
    ("table.csv", b"a,b\n1,2\n", "text/csv", Document),
    ("table.tsv", b"a\tb\n1\t2\n", "text/tab-separated-values", Document),
    ("README.md", b"# Title\n\ntext\n", "text/markdown", Document),
    ("page.html", b"<p>hi</p>", "text/html", Document),
    ("data.json", b'{"a": 1}', "application/json", Document),
    ("script.py", b"print('hi')\n", "text/x-python", Document),
    ("config.yaml", b"a: 1\nb: [2, 3]\n", "text/plain", Document),
    ("Makefile", b"all:\n\techo hi\n", "text/plain", Document),
    ("notes.unknownext", b"just text\n", "text/plain", Document),
    ("voice.wav", real_wav(), "audio/wav", Audio),
    ("song.mp3", MP3_ID3, "audio/mpeg", Audio),
    ("clip.ogg", OGG, "audio/ogg", Audio),
    ("clip.flac", FLAC, "audio/flac", Audio),
    ("movie.mp4", MP4, "video/mp4", Video),
    ("movie.mov", MOV, "video/quicktime", Video),
    ("movie.webm", WEBM, "video/webm", Video),
    ("blob.bin", PNG, "image/png", Image),          # extension says nothing: sniffed
    ("noext", PDF, "application/pdf", Document),
    ("misnamed.png", PDF, "application/pdf", Document),  # the signature beats the name
])
def test_from_file(tmp_path, filename, data, mime, cls):
    path = tmp_path / filename
    path.write_bytes(data)
    part = Media.from_file(path)
    assert type(part) is cls
    assert part.mime_type == mime
    assert part.data == data
    assert part.name == filename
    # a plain str path works for from_file too
    assert Media.from_file(str(path)) == part


def test_from_file_options(tmp_path):
    path = tmp_path / "x.dat"
    path.write_bytes(b"1;2;3\n")
    part = Media.from_file(path, "text/csv", name="numbers.csv")
    assert (part.mime_type, part.name) == ("text/csv", "numbers.csv")
    png = tmp_path / "p.png"
    png.write_bytes(PNG)
    img = Image.from_file(png, name="renamed")
    assert (type(img), img.name) == (Image, "renamed")


def test_from_file_rejects_unsupported_files(tmp_path):
    docx = tmp_path / "report.docx"
    docx.write_bytes(ZIP)
    with pytest.raises(ContentError, match=r"unsupported content type.*officedocument"):
        Media.from_file(docx)
    archive = tmp_path / "stuff.zip"
    archive.write_bytes(ZIP)
    with pytest.raises(ContentError, match=r"'application/zip'.*allowed:"):
        Media.from_file(archive)
    binary = tmp_path / "blob.unknownext"
    binary.write_bytes(PAD)
    with pytest.raises(ContentError, match="cannot tell the type of file 'blob\\.unknownext'"):
        Media.from_file(binary)


def test_from_file_errors_are_content_errors(tmp_path):
    with pytest.raises(ContentError, match="no such file"):
        Media.from_file(tmp_path / "missing.png")
    with pytest.raises(ContentError, match="not a regular file"):
        Media.from_file(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ContentError, match="empty"):
        Media.from_file(empty)


# -- size limits ------------------------------------------------------------------------------

def test_default_limit(monkeypatch):
    monkeypatch.delenv(MAX_ATTACHMENT_ENV_VAR, raising=False)
    assert MAX_ATTACHMENT_BYTES == 20 * 1024 * 1024
    assert max_attachment_bytes() == MAX_ATTACHMENT_BYTES


def test_max_bytes_keyword():
    assert Media.from_bytes(b"0123456789", "text/plain", max_bytes=10).size == 10
    with pytest.raises(ContentError) as info:
        Media.from_bytes(b"01234567890", "text/plain", name="n.txt", max_bytes=10)
    message = str(info.value)
    assert "'n.txt'" in message
    assert "11 B" in message
    assert "10 B" in message
    assert "max_bytes=" in message
    assert MAX_ATTACHMENT_ENV_VAR in message
    assert "\n" not in message
    with pytest.raises(ContentError, match="max_bytes must be a positive int"):
        Media.from_bytes(b"x", "text/plain", max_bytes=0)


def test_env_var_is_read_at_call_time(monkeypatch, tmp_path):
    data = b"x" * 2000
    assert Media.from_bytes(data, "text/plain").size == 2000
    monkeypatch.setenv(MAX_ATTACHMENT_ENV_VAR, "0.001")  # 1048 bytes
    assert max_attachment_bytes() == 1048
    with pytest.raises(ContentError, match=r"1\.0 KiB attachment limit.*AGENT_MAGICS_MAX_ATT"):
        Media.from_bytes(data, "text/plain")
    path = tmp_path / "big.txt"
    path.write_bytes(data)
    with pytest.raises(ContentError, match=re.escape("'big.txt' is 2.0 KiB")):
        Media.from_file(path)
    with pytest.raises(ContentError):
        to_part(data)
    # an explicit max_bytes overrides the environment
    assert Media.from_bytes(data, "text/plain", max_bytes=4096).size == 2000
    monkeypatch.setenv(MAX_ATTACHMENT_ENV_VAR, "50")
    assert max_attachment_bytes() == 50 * 1024 * 1024
    assert Media.from_bytes(data, "text/plain").size == 2000


@pytest.mark.parametrize("value", ["lots", "-1", "0", "nan", "inf"])
def test_bad_env_var_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv(MAX_ATTACHMENT_ENV_VAR, value)
    with pytest.raises(ConfigError, match=MAX_ATTACHMENT_ENV_VAR):
        Media.from_bytes(b"x", "text/plain")


def test_from_file_checks_size_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.bin"
    with open(path, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MiB on paper, nothing on disk

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was opened before its size was checked")

    monkeypatch.setattr(content, "open", no_reading, raising=False)
    with pytest.raises(ContentError) as info:
        Media.from_file(path)
    message = str(info.value)
    assert "'huge.bin' is 100.0 MiB" in message
    assert "20.0 MiB" in message
    with pytest.raises(ContentError, match=re.escape("over the 1.0 KiB")):
        Media.from_file(path, max_bytes=1024)
    with pytest.raises(ContentError):
        to_part(path)


def test_from_file_rechecks_a_file_that_grew(tmp_path, monkeypatch):
    path = tmp_path / "growing.txt"
    path.write_bytes(b"small")
    monkeypatch.setattr(content, "open", lambda *a, **k: io.BytesIO(b"y" * 100), raising=False)
    with pytest.raises(ContentError, match=re.escape("growing.txt")):
        Media.from_file(path, max_bytes=50)


# -- conversions ------------------------------------------------------------------------------

def test_to_part_basics(tmp_path):
    assert to_part("hello") == TextPart("hello")
    assert isinstance(to_part(PNG), Image)
    assert isinstance(to_part(bytearray(PDF)), Document)
    assert to_part(PNG, name="p.png").name == "p.png"
    path = tmp_path / "plot.png"
    path.write_bytes(PNG)
    assert to_part(path) == Image(PNG, "image/png", "plot.png")
    img = Image(PNG, "image/png")
    assert to_part(img) is img


def test_a_str_is_never_a_path(tmp_path, monkeypatch):
    path = tmp_path / "plot.png"
    path.write_bytes(PNG)
    assert to_part(str(path)) == TextPart(str(path))
    monkeypatch.chdir(tmp_path)
    assert to_part("plot.png") == TextPart("plot.png")


def test_stream_text_chunk_becomes_a_textpart():
    from agent_magics.types import Text

    assert to_part(Text("chunk")) == TextPart("chunk")


@pytest.mark.parametrize("obj", [object(), 42, 3.5, {"a": 1}, {1, 2}, None])
def test_unsupported_objects(obj):
    with pytest.raises(ContentError) as info:
        to_part(obj)
    message = str(info.value)
    assert type(obj).__qualname__ in message
    assert "supported:" in message
    assert "DataFrame" in message
    assert "\n" not in message


def test_dataframe_becomes_csv_document():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"city": ["Paris", "Oslo"], "temp": [21.5, 12.0]})
    part = to_part(df, name="weather")
    assert isinstance(part, Document)
    assert part.mime_type == "text/csv"
    assert part.name == "weather.csv"
    assert part.decode() == "city,temp\nParis,21.5\nOslo,12.0\n"
    assert to_part(df).name == "dataframe.csv"
    df.attrs["name"] = "weather_df"
    assert to_part(df).name == "weather_df.csv"
    assert to_part(df, name="w.csv").name == "w.csv"


def test_dataframe_keeps_a_meaningful_index():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"v": [1, 2, 3]}, index=pd.Index(["a", "b", "c"], name="key"))
    assert to_part(df).decode() == "key,v\na,1\nb,2\nc,3\n"
    filtered = pd.DataFrame({"v": [1, 2, 3]})[lambda d: d.v > 1]
    assert to_part(filtered).decode() == ",v\n1,2\n2,3\n"


def test_series_becomes_csv_document():
    pd = pytest.importorskip("pandas")
    part = to_part(pd.Series([1, 2, 3], name="counts"))
    assert part.name == "counts.csv"
    assert part.decode() == "counts\n1\n2\n3\n"
    unnamed = to_part(pd.Series([4, 5]))
    assert unnamed.name == "series.csv"
    assert unnamed.decode() == "value\n4\n5\n"


def test_large_dataframe_is_capped_with_a_note():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"i": range(25_000), "sq": [i * i for i in range(25_000)]})
    part = to_part(df, name="big")
    text = part.decode()
    assert f"showing the first {MAX_TABLE_ROWS:,} of 25,000 rows" in text
    back = pd.read_csv(io.StringIO(text), comment="#")
    assert len(back) == MAX_TABLE_ROWS
    assert list(back.columns) == ["i", "sq"]
    assert back["i"].tolist() == list(range(MAX_TABLE_ROWS))


def test_wide_tables_are_capped_to_their_first_columns_with_a_note():
    pd = pytest.importorskip("pandas")
    np = pytest.importorskip("numpy")
    wide = pd.DataFrame(np.arange(3 * 5000).reshape(3, 5000),
                        columns=[f"c{i}" for i in range(5000)])
    text = to_part(wide, name="wide").decode()
    assert f"# truncated: showing the first {MAX_TABLE_COLUMNS:,} of 5,000 columns" in text
    back = pd.read_csv(io.StringIO(text), comment="#")
    assert list(back.columns) == [f"c{i}" for i in range(MAX_TABLE_COLUMNS)]
    assert back.iloc[2, -1] == 2 * 5000 + MAX_TABLE_COLUMNS - 1
    assert len(text) < 5_000  # not the 84 kB of all columns
    # both cuts at once: a note for each
    both = to_part(pd.DataFrame(np.zeros((2000, 300)))).decode()
    assert "of 300 columns" in both and "of 2,000 rows" in both
    # a wide 2-D array, and a structured array with many fields
    grid = to_part(np.ones((2, 400), dtype=int)).decode().splitlines()
    assert grid[1] == ",".join(["1"] * MAX_TABLE_COLUMNS)
    assert grid[-1] == f"# truncated: showing the first {MAX_TABLE_COLUMNS} of 400 columns"
    fields = np.zeros(1, dtype=[(f"f{i}", "i4") for i in range(150)])
    lines = to_part(fields).decode().splitlines()
    assert lines[1].split(",")[-1] == f"f{MAX_TABLE_COLUMNS - 1}"
    assert lines[-1].endswith("of 150 columns")
    # narrow tables carry no column note
    assert "columns" not in to_part(pd.DataFrame({"a": [1]})).decode()


def test_dataframe_is_shrunk_to_fit_the_limit():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"text": ["x" * 100] * 500})
    part = to_part(df, max_bytes=3000)
    assert part.size <= 3000
    text = part.decode()
    assert "of 500 rows" in text
    shown = len(pd.read_csv(io.StringIO(text), comment="#"))
    assert 10 <= shown < 30
    with pytest.raises(ContentError, match=r"DataFrame 'wide'.*max_bytes="):
        to_part(pd.DataFrame({"text": ["x" * 500]}), name="wide", max_bytes=100)


def test_empty_dataframe_is_still_a_document():
    pd = pytest.importorskip("pandas")
    part = to_part(pd.DataFrame({"a": []}))
    assert isinstance(part, Document)
    assert part.decode().startswith("a")
    assert isinstance(to_part(pd.DataFrame()), Document)


def test_numpy_arrays_become_text_documents():
    np = pytest.importorskip("numpy")
    two_d = to_part(np.arange(6).reshape(2, 3), name="grid")
    assert (two_d.mime_type, two_d.name) == ("text/csv", "grid.csv")
    assert two_d.decode() == "# numpy array shape=(2, 3) dtype=int64\n0,1,2\n3,4,5\n"
    one_d = to_part(np.array([1.5, 2.5]))
    assert one_d.decode().splitlines()[1:] == ["1.5", "2.5"]
    structured = to_part(np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]))
    assert structured.decode().splitlines()[1:] == ["a,b", "1,2.0"]
    scalar = to_part(np.array(7))
    assert scalar.mime_type == "text/plain"
    assert scalar.decode().endswith("7\n")
    cube = to_part(np.zeros((2, 2, 2)))
    assert cube.mime_type == "text/plain"
    assert "shape=(2, 2, 2)" in cube.decode()
    big = to_part(np.arange(5000))
    lines = big.decode().splitlines()
    assert lines[-1] == "# truncated: showing the first 1,000 of 5,000 rows"
    assert len(lines) == MAX_TABLE_ROWS + 2


def test_matplotlib_figure_and_axes_become_png_images():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    try:
        ax.plot([1, 2, 3], [3, 1, 2])
        part = to_part(fig, name="trend")
        assert isinstance(part, Image)
        assert part.mime_type == "image/png"
        assert part.name == "trend.png"
        assert part.data.startswith(b"\x89PNG\r\n\x1a\n")
        assert to_part(fig).name == "figure.png"
        assert to_part(ax).data.startswith(b"\x89PNG")
        with pytest.raises(ContentError, match="over the"):
            to_part(fig, max_bytes=100)
    finally:
        plt.close(fig)


def test_pil_images_become_png_images():
    pil = pytest.importorskip("PIL.Image")
    img = pil.new("RGB", (4, 3), (255, 0, 0))
    part = to_part(img)
    assert isinstance(part, Image)
    assert part.mime_type == "image/png"
    assert part.name == "image.png"
    assert pil.open(io.BytesIO(part.data)).size == (4, 3)
    cmyk = to_part(pil.new("CMYK", (2, 2)), name="print")
    assert cmyk.name == "print.png"
    assert pil.open(io.BytesIO(cmyk.data)).format == "PNG"


@pytest.mark.parametrize(("fmt", "mime"), [
    ("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
])
def test_sniffs_real_encoder_output(fmt, mime):
    pil = pytest.importorskip("PIL.Image")
    from PIL import features

    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("PIL built without WebP")
    buf = io.BytesIO()
    pil.new("RGB", (8, 8), (0, 128, 255)).save(buf, format=fmt)
    part = Media.from_bytes(buf.getvalue())
    assert (type(part), part.mime_type) == (Image, mime)


def test_objects_with_repr_png():
    class Plot:
        def _repr_png_(self):
            return PNG

    class PlotWithMetadata:
        def _repr_png_(self):
            return PNG, {"width": 10}

    class Base64Plot:
        def _repr_png_(self):
            return base64.b64encode(PNG).decode()

    class JpegOnly:
        def _repr_png_(self):
            return None

        def _repr_jpeg_(self):
            return JPEG

    class Nothing:
        def _repr_png_(self):
            return None

    assert to_part(Plot()) == Image(PNG, "image/png")
    assert to_part(Plot(), name="p").name == "p.png"
    assert to_part(PlotWithMetadata()).data == PNG
    assert to_part(Base64Plot()).data == PNG
    assert to_part(JpegOnly()).mime_type == "image/jpeg"
    with pytest.raises(ContentError, match="Nothing"):
        to_part(Nothing())


# -- normalize and as_text --------------------------------------------------------------------

def test_normalize_single_items():
    assert normalize("hi") == [TextPart("hi")]
    assert normalize("") == [TextPart("")]
    img = Image(PNG, "image/png")
    assert normalize(img) == [img]
    assert normalize(PNG) == [img]


def test_normalize_multipart_and_flattening():
    img = Image(PNG, "image/png")
    parts = normalize(["describe these", [img, PDF], "thanks"])
    assert [type(p) for p in parts] == [TextPart, Image, Document, TextPart]
    assert parts[1] is img
    assert normalize(("a", "b")) == [TextPart("a"), TextPart("b")]
    assert normalize(["", img, "  "]) == [img]
    assert normalize([""]) == [TextPart("")]


@pytest.mark.parametrize("bad", [None, [], (), [[]], [None], ["a", [None]]])
def test_normalize_rejects_nothing(bad):
    with pytest.raises(ContentError):
        normalize(bad)


def test_normalize_rejects_deep_nesting_and_bad_items():
    with pytest.raises(ContentError, match="nested too deeply"):
        normalize(["a", ["b", ["c"]]])
    with pytest.raises(ContentError, match="supported:"):
        normalize(["a", object()])


def test_normalize_passes_max_bytes():
    with pytest.raises(ContentError, match="over the 10 B"):
        normalize(["a", b"x" * 20], max_bytes=10)


def test_as_text():
    img = Image(PNG, "image/png", "plot.png")
    csv_doc = Document(b"a,b\n1,2\n", "text/csv", "t.csv")
    parts = [TextPart("look at"), img, csv_doc]
    assert as_text(parts) == f"look at\n[image/png plot.png {format_size(len(PNG))}]\n" \
                             "[text/csv t.csv 8 B]"
    inlined = as_text(parts, inline_documents=True)
    assert inlined.endswith("[text/csv t.csv 8 B]\na,b\n1,2")
    assert "[image/png plot.png" in inlined  # binary media are only described
    assert as_text("plain") == "plain"
    assert as_text(["a", PDF]).startswith("a\n[application/pdf ")


# -- import cost ------------------------------------------------------------------------------

def test_import_is_cheap():
    code = ("import sys, agent_magics.content; "
            "print(sorted(m for m in ('pandas', 'numpy', 'PIL', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
