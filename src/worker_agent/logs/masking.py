"""Secret masking for job logs, on raw bytes, in one pass for all secrets.

A `SecretMasker` replaces every form in which a secret value can show up in a log (see `secret_forms`) with
`SECRET_MASK`, leftmost-longest and without overlaps. It never decodes: bytes that are not UTF-8 come out exactly
as the job printed them.

Checkpoint contract. Let `consumed` be the number of input bytes fed so far. The bytes returned so far are exactly
what an uninterrupted run writes for the input before offset `consumed - held`, and nothing of what comes after.
So a caller records the pair (consumed - held, output bytes written); to resume, it cuts the output back to the
recorded size and feeds a NEW masker the same input from the recorded offset: the output then continues exactly
as if the run had never stopped. (Recording only when `held == 0` is the special case consumed - 0.) This holds
because the held tail is the masker's only state and what it returned never depends on the bytes after it. Each
stream needs its own masker and offset. Call `flush` only at the input's real end: it stops waiting for the rest
of a secret.

How it is fast. Forms of 8 bytes or more (as many as a cost model finds worth it) are found by sampling: the 4-byte
word at each multiple of `stride` in the input (stride = shortest sampled form - 3) is looked up in a set of the
words at offsets 0 .. stride - 1 of each sampled form. Exactly one sampled offset falls in the first `stride` bytes
of any occurrence, so each occurrence gives one hit, which is then compared in full. The words come out of
memoryview.cast(...).tolist() in C at ~40-60 ns each, so the cost per byte falls with the stride and does not grow
with the number of secrets. The remaining shorter forms get one bytes.find each. Measured with 32 secrets (131
forms) on the 2-core dev machine: one bytes.find per form 60 MB/s, one `re` alternation 4 MB/s, this ~200 MB/s;
Aho-Corasick from the ahocorasick-rs wheel (a new dependency) 490 MB/s.
"""

from __future__ import annotations

import base64
import functools
import json
import sys
import urllib.parse
from collections.abc import Iterable
from typing import Final

# Shorter values would mask ordinary text all over the log.
MIN_SECRET_LENGTH = 4
SECRET_MASK = b"***"
# A base64 core of c characters matches random base64 text by chance with probability 64**-c per position: with 8
# that is 4e-15, never seen in practice, while 4 (2**-24) would garble a byte of a 1 GB base64 dump about every
# 17 MB per core. Secrets of 6 bytes or more have a core this long (7 or more: in all three alignments).
BASE64_MIN_CORE = 8

# Sampled words are 4 bytes, read as C ints (4 bytes wherever CPython runs): a wider word needs a shorter stride
# (length - width + 1) and costs as much per lookup; 8-byte words measured slower on every mix of secrets tried.
_WORD = 4
_CAST: Final = "i"
_MIN_SAMPLED = 8  # the stride (length - 3) must be at least 4, the step of the one-view sample of small buffers
# Measured on the 2-core dev machine (bench/masking.py): looking up one sampled word costs about 40-60 ns, while
# bytes.find for an L-byte pattern costs about 1.8 * L**-0.7 ns per byte. Only their ratio matters here.
_WORD_COST = 50.0
_FIND_COST = 1.8
# Below this many bytes, one view of every word beats four strided views: each view costs ~1 us of Python.
_ONE_VIEW_BELOW = 1024
_BLOCK = 64  # sampled words checked together before looking at them one by one


def is_maskable(value: str) -> bool:
    """Whether a secret value is long enough to be masked; a caller that knows the names can list the others."""
    return len(value) >= MIN_SECRET_LENGTH


def secret_forms(value: str) -> set[bytes]:
    """The byte strings that stand for `value` in a log: raw UTF-8, JSON-escaped, URL-encoded and base64 cores."""
    if not is_maskable(value):
        return set()
    raw = _utf8(value)
    forms = {
        raw,
        json.dumps(value)[1:-1].encode(),
        _utf8(json.dumps(value, ensure_ascii=False)[1:-1]),
        # Quoting the bytes, not the text: a value that is not valid UTF-8 is quoted byte by byte as printed.
        urllib.parse.quote(raw, safe="").encode(),
        urllib.parse.quote_plus(raw).encode(),
    }
    forms.update(core for core in base64_cores(raw) if len(core) >= BASE64_MIN_CORE)
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def _utf8(text: str) -> bytes:
    # os.environ carries bytes that are not UTF-8 as lone surrogates (surrogateescape): give those bytes back.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates, e.g. from a JSON "\ud800" escape
        return text.encode("utf-8", "surrogatepass")


def base64_cores(raw: bytes) -> list[bytes]:
    """For each of the 3 alignments of `raw` inside a base64 stream, the characters that depend on `raw` alone.

    Preceded by `a` bytes, `raw` covers bits [8a, 8a + 8n) of the stream; character k encodes bits [6k, 6k + 6), so
    the characters from ceil(8a / 6) up to, not including, floor((8a + 8n) / 6) are the same whatever surrounds it.
    """
    cores = []
    for align in range(3):
        encoded = base64.b64encode(bytes(align) + raw)
        cores.append(encoded[(8 * align + 5) // 6 : 8 * (align + len(raw)) // 6])
    return cores


class _Tables:
    """What the search needs, built once per set of forms (and shared: each stream of a job has its own masker)."""

    def __init__(self, forms: frozenset[bytes]) -> None:
        self.shortest = min(map(len, forms))
        threshold = _sampling_threshold(sorted(map(len, forms)))
        sampled = [form for form in forms if len(form) >= threshold]
        self.by_find = tuple(form for form in forms if len(form) < threshold)
        # Sampling every `stride` bytes puts exactly one sampled offset in the first `stride` bytes of any
        # occurrence of a sampled form, so only the words at offsets 0 .. stride - 1 of each form need looking up:
        # word (the integer memoryview.cast(_CAST) reads) -> (form, offset of the word in it).
        self.stride = min(map(len, sampled), default=_MIN_SAMPLED) - _WORD + 1
        self.anchors: dict[int, list[tuple[bytes, int]]] = {}
        # A held tail of 4 bytes or more ends with a word of the form it starts: last word -> (form, prefix length).
        self.tail_words: dict[int, list[tuple[bytes, int]]] = {}
        for form in forms:
            words = _words_of(form)
            if len(form) >= threshold:
                for offset, word in enumerate(words[: self.stride]):
                    self.anchors.setdefault(word, []).append((form, offset))
            for offset, word in enumerate(words[:-1], _WORD):
                self.tail_words.setdefault(word, []).append((form, offset))
        self.sampled = frozenset(self.anchors)
        # Forms by first byte: whether a held tail plus a small feed is still the start of a form.
        self.by_first: dict[int, list[bytes]] = {}
        for form in forms:
            self.by_first.setdefault(form[0], []).append(form)
        # Prefixes of 1-3 bytes, by length, for held tails too short to have a last word; and their last bytes,
        # so that most feeds (ending with a newline, say) skip the three look-ups.
        self.short_prefixes = [frozenset(f[:size] for f in forms if len(f) > size) for size in range(_WORD)]
        self.short_ends = frozenset(prefix[-1] for prefixes in self.short_prefixes for prefix in prefixes if prefix)


def _words_of(form: bytes) -> list[int]:
    """The 4-byte substrings of `form` as native integers, by offset."""
    view = memoryview(form)
    words = [0] * max(0, len(form) - _WORD + 1)
    for start in range(min(_WORD, len(words))):
        end = start + (len(form) - start) // _WORD * _WORD
        words[start::_WORD] = view[start:end].cast(_CAST).tolist()
    return words


def _sampling_threshold(lengths: list[int]) -> float:
    """The form length from which sampling is cheaper than one bytes.find per form (inf: sample none)."""
    best, best_cost = float("inf"), sum(_FIND_COST * size**-0.7 for size in lengths)
    for index, size in enumerate(lengths):
        if size < _MIN_SAMPLED or (index and lengths[index - 1] == size):
            continue
        cost = _WORD_COST / (size - _WORD + 1) + sum(_FIND_COST * short**-0.7 for short in lengths[:index])
        if cost < best_cost:
            best, best_cost = size, cost
    return best


@functools.lru_cache(maxsize=4)
def _tables(forms: frozenset[bytes]) -> _Tables:
    return _Tables(forms)


class SecretMasker:
    """Masks secret values in one output stream; see the module docstring for the checkpoint contract.

    `too_short` counts the distinct non-empty values shorter than MIN_SECRET_LENGTH characters, which are not masked,
    so that a caller can warn about them without printing any value.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {value for value in secrets if value}
        self.too_short = sum(1 for value in values if not is_maskable(value))
        forms = frozenset(form for value in values for form in secret_forms(value))
        self._tables = _tables(forms) if forms else None
        self._held = b""

    @property
    def held(self) -> int:
        """Input bytes fed but not yet returned: they might be the start of a secret."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        """The masked bytes that are final now; holds back only a tail that could still start a secret."""
        if self._tables is None:
            return data
        buf = self._held + data if self._held else data
        if self._held and _starts_a_form(self._tables, buf):
            # What the full pass would say too (nothing is final before a possible start), at the cost of a
            # compare: a long secret fed a few bytes at a time does not rescan what is held at each feed.
            self._held = buf
            return b""
        out, cut = _mask(buf, _occurrences(self._tables, buf), _tail_starts(self._tables, buf))
        self._held = buf[cut:]
        return out

    def flush(self) -> bytes:
        """What is held, masked as far as it goes; only at the input's real end."""
        if self._tables is None or not self._held:
            return b""
        buf, self._held = self._held, b""
        return _mask(buf, _occurrences(self._tables, buf), [])[0]


def _starts_a_form(tables: _Tables, buf: bytes) -> bool:
    """Whether `buf` is a proper prefix of some form."""
    return any(len(form) > len(buf) and form.startswith(buf) for form in tables.by_first.get(buf[0], ()))


def _mask(buf: bytes, matches: list[tuple[int, int]], tails: list[int]) -> tuple[bytes, int]:
    """Replace matches leftmost-longest up to the first possible secret start; return (output, where it stops).

    `matches` are all complete occurrences, sorted by start then longest first; `tails` the ascending starts of
    tails that are a proper prefix of some form. A match is final only if it starts before the first such tail at
    or after the current position: that tail could still grow into an earlier or longer match.
    """
    if not matches and not tails:
        return buf, len(buf)
    pieces: list[bytes] = []
    pos = 0
    next_tail = 0
    for start, end in matches:
        if start < pos:
            continue
        while next_tail < len(tails) and tails[next_tail] < pos:
            next_tail += 1
        if next_tail < len(tails) and start >= tails[next_tail]:
            break
        pieces += (buf[pos:start], SECRET_MASK)
        pos = end
    while next_tail < len(tails) and tails[next_tail] < pos:
        next_tail += 1
    cut = tails[next_tail] if next_tail < len(tails) else len(buf)
    pieces.append(buf[pos:cut])
    return b"".join(pieces), cut


def _occurrences(tables: _Tables, buf: bytes) -> list[tuple[int, int]]:
    """Every complete occurrence (start, end) of every form in `buf`, overlapping ones included."""
    if len(buf) < tables.shortest:
        return []
    found: set[tuple[int, int]] = set()
    for form in tables.by_find:
        # Step 1, not len(form): an overlapping occurrence may be the one left after an earlier match.
        at = buf.find(form)
        while at >= 0:
            found.add((at, at + len(form)))
            at = buf.find(form, at + 1)
    for at, word in _sampled_hits(tables, buf):
        for form, offset in tables.anchors[word]:
            if at >= offset and buf.startswith(form, at - offset):
                found.add((at - offset, at - offset + len(form)))
    if not found:
        return []
    return sorted(found, key=lambda match: (match[0], -match[1]))


def _sampled_hits(tables: _Tables, buf: bytes) -> list[tuple[int, int]]:
    """(offset, word) of the sampled words of `buf` that are anchors of a sampled form."""
    hits: list[tuple[int, int]] = []
    if not tables.sampled:
        return hits
    for first, step, words in _sampled_words(buf, tables.stride):
        if tables.sampled.isdisjoint(words):
            continue
        # Narrow down in C first: a hit is usually one secret in a big chunk.
        for block in range(0, len(words), _BLOCK):
            part = words[block : block + _BLOCK]
            if not tables.sampled.isdisjoint(part):
                hits += [(first + index * step, w) for index, w in enumerate(part, block) if w in tables.sampled]
    return hits


def _sampled_words(buf: bytes, stride: int) -> list[tuple[int, int, list[int]]]:
    """(offset of the first, bytes between two, words) of views that hold the words at each multiple of `stride`."""
    view = memoryview(buf)
    size = len(buf)
    if size < _ONE_VIEW_BELOW:
        # The word at every multiple of 4: each occurrence has one within its first 4 <= stride bytes.
        return [(0, _WORD, view[: size - size % _WORD].cast(_CAST).tolist())]
    # Offset k * stride with k = 4i + j is word i * stride of view j: four views give every sampled offset.
    views = []
    for j in range(_WORD):
        first = j * stride
        end = first + (size - first) // _WORD * _WORD
        if end > first:
            views.append((first, _WORD * stride, view[first:end].cast(_CAST)[::stride].tolist()))
    return views


def _tail_starts(tables: _Tables, buf: bytes) -> list[int]:
    """Ascending offsets t such that buf[t:] is a proper prefix of some form."""
    size = len(buf)
    starts = []
    if size >= _WORD:
        # A prefix of 4+ bytes ends with one of the form's words: look the last word of buf up.
        last = int.from_bytes(buf[-_WORD:], sys.byteorder, signed=True)
        for form, length in tables.tail_words.get(last, ()):
            if buf.endswith(form[:length]):
                starts.append(size - length)
    if size and buf[-1] in tables.short_ends:
        for length in range(1, min(_WORD, size + 1)):
            if buf[size - length :] in tables.short_prefixes[length]:
                starts.append(size - length)
    return sorted(set(starts)) if starts else starts
