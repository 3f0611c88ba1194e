"""A strict parser for kgated's log lines (doc/kgated.8.scd, LOGGING).

A line is an optional "<N>" syslog priority prefix (journald mode), then
space-separated key=value pairs: keys [A-Za-z0-9_.-]+, values either bare
(printable ASCII without space, '"', '=' or '\\') or double-quoted with the
escapes \\" \\\\ \\n \\r \\t \\xHH. Nothing else is accepted: no bare words,
no empty bare values, no duplicate keys, no raw control or non-ASCII bytes.
Every line has level= and event=; without the prefix it starts with ts=
(RFC 3339 UTC, milliseconds). parse_line raises LogfmtError on anything else.
"""
import re

LEVELS = {"error": 3, "warn": 4, "notice": 5, "info": 6, "debug": 7}
KEY_RE = re.compile(r"[A-Za-z0-9_.-]+")
BARE_RE = re.compile(r'[!#-<>-\[\]-~]+')  # 0x21-0x7e minus '"', '=', '\'
TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
EVENT_RE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


class LogfmtError(ValueError):
    pass


def _quoted(line, i):
    """Parses a quoted value starting at line[i] == '"'; returns (text, end)."""
    out = []
    i += 1
    while True:
        if i >= len(line):
            raise LogfmtError("unterminated quoted value")
        c = line[i]
        if c == '"':
            return "".join(out), i + 1
        if ord(c) < 0x20 or ord(c) >= 0x7f:
            raise LogfmtError("raw byte 0x%02x inside a quoted value" % ord(c))
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(line):
            raise LogfmtError("dangling backslash")
        e = line[i + 1]
        if e in ESCAPES:
            out.append(ESCAPES[e])
            i += 2
        elif e == "x" and re.fullmatch(r"[0-9a-f]{2}", line[i + 2:i + 4]):
            out.append(chr(int(line[i + 2:i + 4], 16)))
            i += 4
        else:
            raise LogfmtError("unknown escape \\%s" % e)


def parse_pairs(text):
    """key=value pairs of text (no prefix), as an ordered list."""
    pairs = []
    i = 0
    while i < len(text):
        if pairs:
            if text[i] != " ":
                raise LogfmtError("expected a space at column %d" % i)
            i += 1
        m = KEY_RE.match(text, i)
        if not m:
            raise LogfmtError("expected a key at column %d" % i)
        key = m.group(0)
        i = m.end()
        if i >= len(text) or text[i] != "=":
            raise LogfmtError("key %r without '='" % key)
        i += 1
        if i < len(text) and text[i] == '"':
            value, i = _quoted(text, i)
        else:
            m = BARE_RE.match(text, i)
            if not m:
                raise LogfmtError("key %r: empty or invalid bare value" % key)
            value = m.group(0)
            i = m.end()
        pairs.append((key, value))
    return pairs


def parse_line(line, journal=None):
    """One log line (without its newline) -> dict. journal: None accepts
    both forms, True requires the <N> prefix, False requires ts=."""
    if "\n" in line:
        raise LogfmtError("embedded newline")
    prio = None
    m = re.match(r"<([0-7])>", line)
    if m:
        prio = int(m.group(1))
        line = line[m.end():]
    if journal is True and prio is None:
        raise LogfmtError("no <N> prefix in journal mode")
    if journal is False and prio is not None:
        raise LogfmtError("<N> prefix outside journal mode")
    pairs = parse_pairs(line)
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise LogfmtError("duplicate key in %r" % keys)
    rec = dict(pairs)
    want = ["level", "event"] if prio is not None else ["ts", "level", "event"]
    if keys[:len(want)] != want:
        raise LogfmtError("line must start with %s, got %s" % (want, keys[:3]))
    if prio is None and not TS_RE.fullmatch(rec["ts"]):
        raise LogfmtError("bad ts %r" % rec["ts"])
    if rec["level"] not in LEVELS:
        raise LogfmtError("bad level %r" % rec["level"])
    if prio is not None and LEVELS[rec["level"]] != prio:
        raise LogfmtError("prefix <%d> disagrees with level=%s" % (prio, rec["level"]))
    if not EVENT_RE.fullmatch(rec["event"]):
        raise LogfmtError("bad event id %r" % rec["event"])
    return rec


def parse_log(text, journal=None):
    """Every line of text -> list of dicts; raises on the first bad line,
    naming its number and content."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            out.append(parse_line(line, journal))
        except LogfmtError as e:
            raise LogfmtError("line %d: %s: %r" % (n, e, line)) from None
    return out


def main(argv):
    """logfmt.py FILE...: checks every line of kgated logs; exit 1 naming
    the first bad line of a file."""
    bad = 0
    for path in argv[1:]:
        with open(path, errors="replace") as f:
            try:
                parse_log(f.read())
            except LogfmtError as e:
                print("%s: %s" % (path, e))
                bad = 1
    return bad


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv))
