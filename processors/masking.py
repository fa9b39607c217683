"""Masking: turn a log message into tokens with its variable parts replaced by ``<*>``.

Used by the signature processor (processors/signature.py) before the parse tree
(processors/miner.py). One default rule set for every log source; no rule knows which
system a line comes from.

How a message is masked (``Masker.mask(text) -> list[str]``):

1. Quoted strings (``'...'`` and ``"..."`` that start and end at a token boundary) become
   ``'<*>'`` / ``"<*>"``, so spaces inside them do not split the message.
2. The text is split on whitespace (at most ``max_tokens`` tokens; the rest is ignored).
3. Each token is classified on its own. Wrapping punctuation (``([{'"`` before,
   ``)]}'",;:.!?`` after; a closer whose opener is inside the token stays) is kept aside,
   then, in this order, so that no rule destroys another's match (a digits rule run first
   would cut ``10.0.0.1:8080`` or ``2023-10-09`` into pieces):

   a. whole-token shapes; each masks the whole core, so their order among themselves
      cannot matter: numbers (sign, ``<``/``>``, decimals, exponent), IPv4 with port or
      prefix, dates, times and timestamps (ISO 8601, ``2016/9/27:20:40:53.744``,
      ``17-Jun-2005``), versions and ranges (digits and ``.:,-/+_~`` only), hex
      (``0x1f``; 8+ hex digits, or 6+ with a digit and a letter: ``6eaaf00``), UUID, MAC,
      IPv6 (also ``[::1]:8080``), URL, e-mail, paths (POSIX, ``~/``, ``./``, relative
      with 2+ ``/``, Windows), durations and sizes with a unit (``35ms``, ``1.5GB``,
      ``99%``), host names with a known top-level domain (and ``:port``),
      ``true``/``false``/``null``/``None``/``nil``, and identifiers mixing letters and
      digits (``blk_-42``, ``rdd_2_2``, ``core.114``, ``i3beln7k``: a part of only digits
      between ``._-~+#``, 4+ digits, or 2+ digits in 4+ letter/digit runs; so ``ssh2``,
      ``e820``, ``Http11Processor`` stay words);
   b. ``key=value`` pairs inside the token (several, split by ``,`` ``;`` ``&``; values
      may hold balanced brackets): every non-empty value becomes ``<*>`` (``uid=42`` →
      ``uid=<*>``, ``logname=`` stays);
   c. ``key:value`` inside the token (``isOverlap:true`` → ``isOverlap:<*>``);
   d. otherwise the token is cut at brackets and separators (``()[]{}<>,;|"'=:``) and
      each piece goes through rule a (``Rect(0,`` → ``Rect(<*>,``).

4. Context rules over the token list:

   - a unit word after a variable (``35 ms``, ``2034 bytes``, ``(1.98 KB)``) joins it;
   - a month or weekday name next to a variable joins it (``Sun Jul 24 02:38:22 2005``);
   - ``key: value`` and ``key = value`` where the value is one plain word closed by ``,``
     ``;`` or the end of the message: the value becomes ``<*>`` (``state: RUNNING``);
   - runs of variables collapse: consecutive tokens that are nothing but ``<*>`` (with
     brackets or punctuation around it, or empty brackets such as ``()``) become one
     ``<*>`` token, so a value that takes one token in one line and three in the next
     (``785 bytes`` vs ``2034 bytes (1.98 KB)``, ``<1 sec`` vs ``00:39``) gives one
     template.

The result is the token list of the masked message; ``" ".join(tokens)`` is the template
text. ``classify`` (steps 1-3) and ``finish`` (step 4) are separate so that a caller can
cache on the classified tokens and run the context rules only for new shapes. Errors:
none raised for any str input (an empty or blank message gives ``[]``).

Speed (DESIGN.md §Hot path): a token seen before costs one dict lookup. For a new one, the
character tests before each regex are C-level string operations, and the regexes that
remain are small and picked by the characters present. No rule depends on digit values
(except a ``0x`` prefix), which lets the signature processor cache whole messages by their
*skeleton* (digits replaced by ``5``).
"""

from __future__ import annotations

import re

VAR = "<*>"

# Characters kept aside around a token before its core is classified.
_LEAD = "([{'\""
_TRAIL = ")]}'\",;:.!?"

_OCT = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCT}(?:\.{_OCT}){{3}}"
_H4 = r"[0-9A-Fa-f]{1,4}"
_IPV6 = (rf"(?:(?:{_H4}:){{7}}{_H4}|(?:{_H4}:){{1,7}}:|(?:{_H4}:){{1,6}}:{_H4}"
         rf"|(?:{_H4}:){{1,5}}(?::{_H4}){{1,2}}|(?:{_H4}:){{1,4}}(?::{_H4}){{1,3}}"
         rf"|(?:{_H4}:){{1,3}}(?::{_H4}){{1,4}}|(?:{_H4}:){{1,2}}(?::{_H4}){{1,5}}"
         rf"|{_H4}:(?::{_H4}){{1,6}}|:(?::{_H4}){{1,7}}|::)(?:%\w+)?")
_UNIT = (r"(?:ns|us|µs|ms|s|sec|secs|m|min|mins|h|hr|hrs|d|days?|"
         r"[kKMGTP]i?[bB]|[bB]|bytes?|[kKMG]|%)")
_NUM = r"[-+<>~]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?"
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)"
_TIME = r"\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?"
_ZONE = r"(?:Z|[+-]\d{2}:?\d{2})?"
# Two-letter labels that are more often file extensions or words than country codes.
_NOT_CC = ("id|is|in|it|to|do|as|at|be|by|if|me|my|no|of|on|or|so|up|py|js|sh|rb|go|pm|"
           "cc|hh|cs|db|gz|xz|bz|md|rs|ts|ml|el|hs|ko|mo|po|ps|ok")
_TLD = (r"(?:com|net|org|edu|gov|mil|int|io|info|biz|local|internal|lan|"
        rf"(?:com|net|org|edu|gov|ac|co)\.[a-z]{{2}}|(?!(?:{_NOT_CC})\b)[a-z]{{2}})")
_HOST = rf"(?=[\w\-.]*[a-z])[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.{_TLD}"
_DATE = (rf"(?:\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{1,2}}[-/.]\d{{2,4}}"
         rf"|\d{{1,2}}[-/]{_MONTH}[-/]\d{{2,4}})")

# Whole-token shapes. Each is anchored on the whole core, and each masks all of it, so a
# more general rule cannot cut a more specific shape apart whatever the order. Which
# shapes are tried is picked by cheap character tests (one small regex instead of one
# big alternation); every shape is listed under each character it can contain.
_URL = r"[A-Za-z][A-Za-z0-9+.\-]*://\S*"
_EMAIL = r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+"
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_MAC = r"[0-9A-Fa-f]{2}(?:[:\-][0-9A-Fa-f]{2}){5}"
_STAMP = rf"{_DATE}(?:[T_:\- ]?{_TIME}{_ZONE})?"                  # date [time]
_CLOCK = rf"{_TIME}{_ZONE}"                                        # time of day
_IP4 = rf"/?{_IPV4}(?::\d{{1,5}})?(?:/\d{{1,2}})?"                 # IPv4[:port][/n]
_IP6 = rf"\[{_IPV6}\](?::\d{{1,5}})?|{_IPV6}"                        # IPv6, [IPv6]:port
_POSIX = (r"(?:~|\.{1,2})?/(?:[^/\s]*/)+[^/\s]*|(?:/|\.{1,2}/)[\w.\-]+"
          r"|[\w.\-]+(?:/[\w.\-]+){2,}/?")
_WINPATH = r"[A-Za-z]:\\[^\s]*"
_HEX = r"0[xX][0-9A-Fa-f]+|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}"
_QUANTITY = rf"{_NUM}{_UNIT}"                                       # duration / size
_HOSTPORT = rf"{_HOST}(?::\d{{1,5}})?"                              # host name[:port]
_LITERAL = r"true|false|null|True|False|None|NULL|nil"


def _any_of(*shapes: str) -> re.Pattern[str]:
    return re.compile("(?:" + "|".join(shapes) + r")\Z")


_SHAPE = _any_of(_URL, _EMAIL, _UUID, _MAC, _STAMP, _CLOCK, _IP4, _IP6, _POSIX, _WINPATH,
                 _HEX, _QUANTITY, _NUM, _HOSTPORT, _LITERAL)
_SHAPE_SLASH = _any_of(_STAMP, _IP4, _POSIX, _WINPATH)    # has / or \ (no :// or @)
_SHAPE_COLON = _any_of(_MAC, _STAMP, _CLOCK, _IP4, _IP6, _HOSTPORT)   # has : (none of above)
_SHAPE_OTHER = _any_of(_UUID, _MAC, _STAMP, _IP4, _IP6, _HEX, _QUANTITY, _NUM, _HOSTPORT,
                       _LITERAL)                          # none of : / \ @


def _shape_match(s: str) -> bool:
    """True when ``s`` is as a whole one of the shapes above."""
    if "://" in s or "@" in s:
        return _SHAPE.match(s) is not None
    if "/" in s or "\\" in s:
        return _SHAPE_SLASH.match(s) is not None
    if ":" in s:
        return _SHAPE_COLON.match(s) is not None
    return _SHAPE_OTHER.match(s) is not None


_KV = re.compile(r"([A-Za-z_][\w.\-\[\]]*=)"                                # key=
                 r"((?:[^,;&()\[\]{}]|\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\})*)")   # value
_KCOLON = re.compile(r"([A-Za-z_][\w.\-]*:)([^/:\s]+)\Z")
_PIECES = re.compile(r"([()\[\]{}<>,;|\"'=:]+)")
_ALNUM_RUNS = re.compile(r"[A-Za-z]+|[0-9]+")
_QUOTED = re.compile(r"(?<![\w\"'])(['\"])[^'\"]*?\1(?![\w])")

# Unit words that join the number before them ("35 ms", "2034 bytes"). Of the one-letter
# words only "B": "<n> s" or "<n> b" are too often something else.
UNITS = frozenset((
    "ns", "us", "µs", "ms", "sec", "secs", "second", "seconds", "min", "mins", "minute",
    "minutes", "hr", "hrs", "hour", "hours", "day", "days", "millis", "msec", "msecs",
    "millisecond", "milliseconds", "microsecond", "microseconds", "nanosecond",
    "nanoseconds", "B", "byte", "bytes", "KB", "kB", "kb", "KiB", "MB", "mb", "MiB", "GB",
    "gb", "GiB", "TB", "TiB", "%",
))
DATE_WORDS = frozenset((
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov",
    "Dec", "January", "February", "March", "April", "June", "July", "August", "September",
    "October", "November", "December", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "AM",
    "PM", "UTC", "GMT",
))
_OPEN_OF = {")": "(", "]": "[", "}": "{"}
_CLOSE = {"(": ")", "[": "]", "{": "}", "'": "'", '"': '"'}
_LITERALS = frozenset(("true", "false", "null", "True", "False", "None", "NULL", "nil"))
_EMPTY_BRACKETS = frozenset(["()", "[]", "{}", "''", '""', "<>"])
MAX_TOKEN_CHARS = 256  # longer tokens are variables (blobs), classified without a regex

_B_DIGITS = b"0123456789"
_B_NUMERIC = b"0123456789.:,-/+_~"
_B_HEX = b"0123456789abcdefABCDEF:-_"
_B_HEX_LETTERS = b"abcdefABCDEF"
_B_SEPS_TO_SPACE = bytes.maketrans(b"._-~+#", b"      ")
_B_SHAPE = b"/@.:\\"  # a digit-free core can be a shape only if it has one of these
_B_PIECE = b"()[]{}<>,;|\"'=:"


def _is_identifier_value(piece: str, b: bytes, digits: int) -> bool:
    """True for a piece (``b``: its UTF-8, ``digits``: its digit count > 0) that is an id
    mixing letters and digits (see module docstring)."""
    if digits >= 4 or any(map(bytes.isdigit, b.translate(_B_SEPS_TO_SPACE).split())):
        return True
    if len(b) >= 8 and not b.translate(None, _B_HEX):
        return True
    return digits >= 2 and len(_ALNUM_RUNS.findall(piece)) >= 4  # a1b2, i3beln7k


def _whole_var(s: str) -> bool:
    """True when ``s`` (a token core or a piece of one) is as a whole one variable shape.
    Every rule here masks the whole of ``s``, so their order cannot matter; rules that
    mask a part (key=value, key:value, pieces) run only after all of these failed."""
    if s.isdigit():
        return True
    if s.isalpha():
        return s in _LITERALS
    b = s.encode("utf-8", "surrogatepass")
    no_digits = b.translate(None, _B_DIGITS)
    if len(no_digits) != len(b):
        if not b.translate(None, _B_NUMERIC):
            return True  # numbers, IPv4[:port], dates, times, versions, ranges
        if b[:2] in (b"0x", b"0X"):
            if len(b) > 2 and not b[2:].translate(None, _B_HEX):
                return True  # 0x hex
        elif len(b) >= 6 and not b.translate(None, _B_HEX) and \
                (len(b) >= 8 or b.translate(None, _B_HEX_LETTERS) != b):
            return True  # bare hex (8+, or 6+ with a letter: 6eaaf00), UUID, MAC
        if len(no_digits.translate(None, _B_PIECE)) == len(no_digits) and \
                _is_identifier_value(s, b, len(b) - len(no_digits)):
            return True
    elif len(b.translate(None, _B_SHAPE)) == len(b):
        return False
    if "=" in s and "://" not in s:
        return False  # key=value pairs have their own rule
    return _shape_match(s)


def _mask_piece(piece: str) -> str:
    if not piece or piece == VAR or (piece.isalpha() and piece not in _LITERALS):
        return piece
    return VAR if _whole_var(piece) else piece


def _mask_pieces(text: str) -> str:
    parts = _PIECES.split(text)
    if len(parts) == 1:
        return _mask_piece(text)
    parts[::2] = map(_mask_piece, parts[::2])
    return "".join(parts)


def _split_punct(tok: str) -> tuple[str, str, str]:
    """(leading brackets, core, trailing punctuation) of a token; a closing bracket whose
    opener is inside the token stays in the core."""
    core = tok.lstrip(_LEAD)
    start = len(tok) - len(core)
    core = core.rstrip(_TRAIL)
    end = start + len(core)
    if end < len(tok) and (")" in tok or "]" in tok or "}" in tok):
        while end < len(tok):
            c = tok[end]
            if c in _OPEN_OF and tok.count(_OPEN_OF[c], start, end + 1) >= \
                    tok.count(c, start, end + 1):
                end += 1
            else:
                break
    return tok[:start], tok[start:end], tok[end:]


def _mask_core(core: str) -> str:
    """The masked form of a token core (rule 3 of the module docstring)."""
    if core.isalpha():
        return VAR if core in _LITERALS else core
    if _whole_var(core):
        return VAR
    if "=" in core:
        masked = _KV.sub(_kv_value, core)
        if masked != core:
            return _mask_pieces(masked)
    if ":" in core:
        m = _KCOLON.match(core)
        if m:
            return m.group(1) + VAR
    b = core.encode("utf-8", "surrogatepass")
    if len(b.translate(None, _B_PIECE)) == len(b):
        return core  # one piece: rule a has judged it already
    return _mask_pieces(core)


def _kv_value(m: re.Match[str]) -> str:
    return m.group(1) + (VAR if m.group(2) else "")


def classify_token(tok: str) -> str:
    """The masked form of one whitespace-free token (rule 3 in the module docstring)."""
    if tok.isalpha():
        return VAR if tok in _LITERALS else tok
    if tok.isdigit() or len(tok) > MAX_TOKEN_CHARS:
        return VAR
    if tok[-1].isdigit() and not tok.encode("utf-8", "surrogatepass").translate(None, _B_NUMERIC):
        return VAR  # fast path: digits and .:,-/+_~ only (IPv4:port, times, decimals, ...)
    if tok in _EMPTY_BRACKETS:
        return tok
    lead, core, trail = _split_punct(tok)
    if not core or VAR in core:
        return tok
    masked = _mask_core(core)
    if masked != VAR and lead[-1:] == "[" and _whole_var("[" + core):
        return lead[:-1] + VAR + trail  # IPv6 in brackets with a port: [::1]:8080
    return lead + masked + trail


# Token kinds, one character each, so that a whole message's kinds form a short string
# that one regex scan can test for the context rules. A kind depends on the masked token
# only.
K_CONST = "o"      # constant, nothing to do with context
K_WORD = "w"       # plain word ([\w.-]+) with nothing around it
K_WORD_SEP = "x"   # plain word closed by ',' or ';'
K_KEY = "k"        # constant ending with ':' (or a lone '=')
K_VAR = "v"        # nothing but <*> (brackets and punctuation aside), or empty brackets
K_UNIT = "u"       # a unit word (ms, bytes, KB, ...)
K_DATE = "d"       # a month or weekday name
_NEEDS_CONTEXT = re.compile(r"v[vud]|d[vd]|kx|k[wud]\Z")


def kind_of(masked: str) -> str:
    """The context kind (K_*) of a masked token."""
    if masked == VAR or masked in _EMPTY_BRACKETS:
        return K_VAR
    lead, core, trail = _split_punct(masked)
    if core == VAR:
        return K_VAR
    if VAR not in masked:
        if core in UNITS:
            return K_UNIT
        if core in DATE_WORDS:
            return K_DATE
    if masked[-1] == ":" or masked == "=":
        return K_KEY
    if VAR not in masked and not lead and trail in ("", ",", ";") and \
            core.replace(".", "").replace("-", "").replace("_", "").isalnum():
        return K_WORD if not trail else K_WORD_SEP
    return K_CONST


class Masker:
    """Masks messages into token lists (see module docstring).

    max_tokens: int >= 1, tokens kept per message (the rest is ignored).
    cache_size: int >= 0, distinct tokens kept in the classification caches; a cache is
        cleared when it grows past this (memory stays bounded).

    Caches: token → masked token, and masked token → context kind.
    """

    def __init__(self, max_tokens: int = 256, cache_size: int = 100_000) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._masked: dict[str, str] = {}
        self._kind_of_masked: dict[str, str] = {}

    def mask(self, text: str) -> list[str]:
        """Masked tokens of ``text`` (see module docstring)."""
        return self.finish(*self.classify(text))

    def classify(self, text: str) -> tuple[list[str], list[str]]:
        """(tokens, masked tokens) of ``text`` before the context rules (steps 1-3 of the
        module docstring). ``" ".join`` of the masked tokens determines the final result,
        so callers may cache on it and call :meth:`finish` only for new ones."""
        if ("'" in text or '"' in text) and _QUOTED.search(text):
            text = _QUOTED.sub(_quoted_var, text)
        toks = text.split(None, self.max_tokens)
        if len(toks) > self.max_tokens:
            toks.pop()
        masked = list(map(self._masked.get, toks))
        if None in masked:
            self._fill(toks, masked)
        return toks, masked  # type: ignore[return-value]

    def finish(self, toks: list[str], masked: list[str]) -> list[str]:
        """The final tokens: the context rules (step 4) applied to :meth:`classify`'s
        result (``toks`` is accepted for symmetry; kinds depend on masked tokens only)."""
        kmc = self._kind_of_masked
        if len(kmc) > self.cache_size:
            kmc.clear()
        kinds = "".join([kmc.get(m) or self._kind(m) for m in masked])
        if _NEEDS_CONTEXT.search(kinds):
            return _context(masked, kinds)
        return masked

    def cached(self, tok: str) -> str | None:
        """The masked form of a token if it is in the cache, else None."""
        return self._masked.get(tok)

    def _kind(self, masked: str) -> str:
        k = self._kind_of_masked[masked] = kind_of(masked)
        return k

    def _fill(self, toks: list[str], masked: list[str | None]) -> None:
        """Classify the tokens not in the cache (``masked`` entries that are None)."""
        cache = self._masked
        if len(cache) > self.cache_size:
            cache.clear()
        for i, m in enumerate(masked):
            if m is None:
                t = toks[i]
                if len(t) > MAX_TOKEN_CHARS:  # a blob: a variable, and not worth caching
                    masked[i] = VAR
                else:
                    masked[i] = cache[t] = classify_token(t)


def _quoted_var(m: re.Match[str]) -> str:
    return m.group(1) + VAR + m.group(1)


def _context(masked: list[str], kinds: str) -> list[str]:
    """Apply the context rules (4 in the module docstring)."""
    out: list[str] = []
    last_var = False   # is out[-1] a variable token
    last_key = False   # is out[-1] a constant key ("name:" or "=")
    n = len(masked)
    for i, m in enumerate(masked):
        k = kinds[i]
        var = k == K_VAR
        if not var:
            if k == K_UNIT and last_var or k == K_DATE and (last_var or (i + 1 < n and kinds[i + 1] in "vd")) or last_key and (k == K_WORD_SEP or (i + 1 == n and k in "wud")):
                var = True
            if var:
                lead, _, trail = _split_punct(m)
                m = lead + VAR + trail
        if var and last_var:
            out[-1] = _merge(out[-1], m)
            continue
        out.append(m)
        last_var = var
        last_key = k == K_KEY
    return out


def _merge(a: str, b: str) -> str:
    """One token for two adjacent variable tokens: ``<*>`` with ``a``'s leading brackets
    when ``b`` closes them (or leaves them open), and ``b``'s trailing punctuation other
    than unmatched closers."""
    lead = a[: len(a) - len(a.lstrip(_LEAD))]
    trail = "" if b in _EMPTY_BRACKETS else b[len(b.rstrip(_TRAIL)):]
    closers = "".join(_CLOSE[c] for c in reversed(lead))
    if not trail or (closers and trail.startswith(closers)):
        return lead + VAR + trail
    return VAR + trail.lstrip(")]}'\"")
