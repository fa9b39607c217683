"""Masking: turn a log message into tokens with its variable parts replaced by ``<*>``.

Used by the signature processor (processors/signature.py) before the parse tree
(processors/miner.py). One default rule set for every log source; no rule knows which
system a line comes from.

How a message is masked (``Masker.mask(text) -> list[str]``):

1. Quoted strings (``'...'`` and ``"..."`` that start and end at a token boundary) become
   one ``<*>`` with their quotes kept, so spaces inside them do not split the message.
2. The text is split on whitespace (at most ``max_tokens`` tokens; the rest is ignored).
3. Each token is classified on its own, through a dict cache (a token seen before costs one
   dict lookup). The rules for one token, in this order, so that no rule destroys another's
   match (a digits rule run first would cut ``10.0.0.1:8080`` or ``2023-10-09`` into pieces):

   - wrapping punctuation (``([{'"`` before, ``)]}'",;:.!?`` after) is kept aside;
   - whole-token shapes, most specific first: URL, e-mail, UUID, MAC, date/time stamp,
     IPv4 with optional port or prefix, IPv6 (optionally ``[...]:port``), file path
     (POSIX, ``~/``, ``./``, Windows), hex (``0x1f``, or 8+ hex digits with a digit),
     duration or size with a unit (``35ms``, ``1.5GB``, ``99%``), number (integer, float,
     exponent, sign or ``<``/``>`` in front), host:port, ``true``/``false``/``null``;
   - ``key=value`` pairs inside the token (also several, split by ``,`` ``;`` ``&``):
     every non-empty value becomes ``<*>`` (``uid=42`` → ``uid=<*>``, ``logname=`` stays);
   - ``key:value`` inside the token (``isOverlap:true`` → ``isOverlap:<*>``);
   - otherwise the token is cut at brackets and separators and each piece is tested as a
     whole-token shape, or as an identifier mixing letters and digits (``blk_-42``,
     ``rdd_2_2``, ``core.114``: a piece with an all-digit part, 8+ hex digits, or 4+ digits
     or 6+ characters with 2+ digits). Short words with a digit (``ssh2``, ``jk2_init``)
     stay constant.

4. Context rules over the token list:

   - a unit word after a variable (``35 ms``, ``2034 bytes``, ``(1.98 KB)``) joins it;
   - a month or weekday name next to a variable joins it (``Sun Jul 24 02:38:22 2005``);
   - ``key: value`` and ``key = value`` where the value is one token closed by ``,`` ``;``
     or the end of the message: the value becomes ``<*>``;
   - runs of variables collapse: consecutive tokens that are nothing but ``<*>`` (with
     brackets around it, or empty brackets such as ``()``) become one ``<*>`` token, so a
     value that takes one token in one line and three in the next (``785 bytes`` vs
     ``2034 bytes (1.98 KB)``, ``<1 sec`` vs ``00:39``) gives one template.

The result is the token list of the masked message; ``" ".join(tokens)`` is the key the
miner caches on. Errors: none raised for any str input (an empty or blank message gives
``[]``).
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

# Whole-token shapes. Order matters only for readability: each alternative is anchored on
# the whole core, so a more general rule cannot cut a more specific shape apart.
_SHAPES = [
    r"[A-Za-z][A-Za-z0-9+.\-]*://\S*",                                   # URL
    r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+",                                 # e-mail
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",  # UUID
    r"[0-9A-Fa-f]{2}(?:[:\-][0-9A-Fa-f]{2}){5}",                         # MAC
    rf"{_DATE}(?:[T_:\- ]?{_TIME}{_ZONE})?",                             # date / timestamp
    rf"{_TIME}{_ZONE}",                                                  # time of day
    rf"/?{_IPV4}(?::\d{{1,5}})?(?:/\d{{1,2}})?",                         # IPv4[:port][/n]
    rf"\[?{_IPV6}\]?(?::\d{{1,5}})?",                                    # IPv6
    r"(?:~|\.{1,2})?/(?:[^/\s]*/)+[^/\s]*|(?:/|\.{1,2}/)[\w.\-]+"        # POSIX path
    r"|[\w.\-]+(?:/[\w.\-]+){2,}/?",
    r"[A-Za-z]:\\[^\s]*",                                                # Windows path
    r"0[xX][0-9A-Fa-f]+|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}",              # hex
    rf"{_NUM}{_UNIT}",                                                   # duration / size
    _NUM,                                                                # number
    rf"{_HOST}(?::\d{{1,5}})?",                                           # host name[:port]
    r"true|false|null|True|False|None|NULL|nil",                         # literal value
]
_SHAPE = re.compile("(?:" + "|".join(_SHAPES) + r")\Z")

_KV = re.compile(r"([A-Za-z_][\w.\-\[\]]*=)((?:[^,;&()\[\]{}]|\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\})*)")
_KCOLON = re.compile(r"([A-Za-z_][\w.\-]*:)([^/:\s]+)\Z")
_PIECES = re.compile(r"([()\[\]{}<>,;|\"'=:]+)")
_ID_PARTS = re.compile(r"[._\-~+#]+")
_PLAIN = re.compile(r"[\w.\-]+\Z")
_QUOTED = re.compile(r"(?<![\w\"'])(['\"])[^'\"]*?\1(?![\w])")

UNITS = frozenset(
    "ns us µs ms s sec secs second seconds min mins minute minutes h hr hrs hour hours "
    "d day days millis msec msecs millisecond milliseconds microsecond microseconds "
    "nanosecond nanoseconds b B byte bytes KB kB kb KiB MB mb MiB GB gb GiB TB TiB % "
    "records rows items".split()) - {"records", "rows", "items"}
DATE_WORDS = frozenset(
    "Jan Feb Mar Apr May Jun Jul Aug Sep Sept Oct Nov Dec January February March April "
    "June July August September October November December Mon Tue Wed Thu Fri Sat Sun "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday AM PM UTC GMT".split())
_OPEN_OF = {")": "(", "]": "[", "}": "{"}
_CLOSE = {"(": ")", "[": "]", "{": "}", "'": "'", '"': '"'}
_LITERALS = frozenset("true false null True False None NULL nil".split())
_EMPTY_BRACKETS = frozenset(["()", "[]", "{}", "''", '""', "<>"])
MAX_TOKEN_CHARS = 256  # longer tokens are variables (blobs), classified without a regex


def _is_identifier_value(piece: str) -> bool:
    """True for a piece that is an id mixing letters and digits (see module docstring)."""
    digits = sum(c.isdigit() for c in piece)
    if not digits:
        return False
    for part in _ID_PARTS.split(piece):
        if part.isdigit():
            return True
    if digits >= 4 or (digits >= 2 and len(piece) >= 6):
        return True
    stripped = piece.replace("-", "").replace("_", "")
    return len(stripped) >= 8 and all(c in "0123456789abcdefABCDEF" for c in stripped)


def _mask_piece(piece: str) -> str:
    if not piece or piece == VAR:
        return piece
    if _SHAPE.match(piece) or _is_identifier_value(piece):
        return VAR
    return piece


def _mask_pieces(text: str) -> str:
    parts = _PIECES.split(text)
    if len(parts) == 1:
        return _mask_piece(text)
    return "".join(p if i % 2 else _mask_piece(p) for i, p in enumerate(parts))


def _split_punct(tok: str) -> tuple[str, str, str]:
    """(leading brackets, core, trailing punctuation) of a token; a closing bracket whose
    opener is inside the token stays in the core."""
    start, end = 0, len(tok)
    while start < end and tok[start] in _LEAD:
        start += 1
    while end > start and tok[end - 1] in _TRAIL:
        c = tok[end - 1]
        if c in _OPEN_OF and tok.count(_OPEN_OF[c], start, end) >= tok.count(c, start, end):
            break
        end -= 1
    return tok[:start], tok[start:end], tok[end:]


def classify_token(tok: str) -> str:
    """The masked form of one whitespace-free token (rule 3 in the module docstring)."""
    if tok in _LITERALS:
        return VAR
    if tok.isalpha():
        return tok
    if tok.isdigit() or len(tok) > MAX_TOKEN_CHARS:
        return VAR
    if VAR in tok or tok in _EMPTY_BRACKETS:
        return tok
    lead, core, trail = _split_punct(tok)
    if not core:
        return tok
    if _SHAPE.match(core):
        return lead + VAR + trail
    if "=" in core:
        masked = _KV.sub(lambda m: m.group(1) + (VAR if m.group(2) else ""), core)
        if masked != core:
            return lead + _mask_pieces(masked) + trail
    m = _KCOLON.match(core)
    if m:
        return lead + m.group(1) + VAR + trail
    if _is_identifier_value(core) and not any(c in core for c in "()[]{}<>,;|\"'=:"):
        return lead + VAR + trail
    return lead + _mask_pieces(core) + trail


# Token kinds, one character each, so that a whole message's kinds form a short string
# that one regex scan can test for the context rules.
K_CONST = "o"      # constant, nothing to do with context
K_WORD = "w"       # plain word ([\w.-]+) with nothing around it
K_WORD_SEP = "x"   # plain word closed by ',' or ';'
K_KEY = "k"        # constant ending with ':' (or a lone '=')
K_VAR = "v"        # nothing but <*> (brackets and punctuation aside), or empty brackets
K_UNIT = "u"       # a unit word (ms, bytes, KB, ...)
K_DATE = "d"       # a month or weekday name
_NEEDS_CONTEXT = re.compile(r"v[vud]|d[vd]|kx|k[wud]\Z")


def token_kind(tok: str, masked: str) -> str:
    """The context kind (K_*) of a token and its masked form."""
    if masked == VAR or masked in _EMPTY_BRACKETS:
        return K_VAR
    lead, core, trail = _split_punct(masked)
    if core == VAR:
        return K_VAR
    bare = tok.strip(_LEAD + _TRAIL)
    if bare in UNITS:
        return K_UNIT
    if bare in DATE_WORDS:
        return K_DATE
    if masked.endswith(":") or masked == "=":
        return K_KEY
    if not lead and _PLAIN.match(core):
        if not trail:
            return K_WORD
        if trail in (",", ";"):
            return K_WORD_SEP
    return K_CONST


class Masker:
    """Masks messages into token lists (see module docstring).

    max_tokens: int >= 1, tokens kept per message (the rest is ignored).
    cache_size: int >= 0, distinct tokens kept in the classification cache; the cache is
        cleared when it grows past this (memory stays bounded).
    """

    def __init__(self, max_tokens: int = 256, cache_size: int = 100_000) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._masked: dict[str, str] = {}
        self._kinds: dict[str, str] = {}

    def mask(self, text: str) -> list[str]:
        """Masked tokens of ``text`` (see module docstring)."""
        if ("'" in text or '"' in text) and _QUOTED.search(text):
            text = _QUOTED.sub(_quoted_var, text)
        toks = text.split(None, self.max_tokens)
        if len(toks) > self.max_tokens:
            toks.pop()
        masked = list(map(self._masked.get, toks))
        if None in masked:
            self._classify(toks, masked)
        kinds = "".join(map(self._kinds.__getitem__, toks))
        if _NEEDS_CONTEXT.search(kinds):
            return _context(masked, kinds)
        return masked

    def _classify(self, toks: list[str], masked: list[str | None]) -> None:
        if len(self._masked) > self.cache_size:
            self._masked.clear()
            self._kinds.clear()
        for i, m in enumerate(masked):
            if m is None:
                t = toks[i]
                m = masked[i] = classify_token(t)
                self._masked[t] = m
                self._kinds[t] = token_kind(t, m)


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
            if k == K_UNIT and last_var:
                var = True
            elif k == K_DATE and (last_var or (i + 1 < n and kinds[i + 1] in "vd")):
                var = True
            elif last_key and (k == K_WORD_SEP or (i + 1 == n and k in "wud")):
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
