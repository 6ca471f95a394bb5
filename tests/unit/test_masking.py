from __future__ import annotations

import base64
import itertools
import random
from collections.abc import Iterable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker_agent.logs import masking
from worker_agent.logs.masking import SECRET_MASK, SecretMasker, base64_cores, is_maskable, secret_forms

# Long enough to be found by sampling (8+ bytes), with lines, spaces and "+/=" so every encoding differs from it.
PEM = "-----BEGIN KEY-----\n" + "\n".join(["MIIEv+QIBADANBgkq/hkiG9w0BAQEFAASC=="] * 3) + "\n-----END KEY-----\n"
TOKEN = "hunter2-secret"


def reference(secrets: Iterable[str], data: bytes) -> bytes:
    """The whole input at once: every occurrence of every form, then leftmost-longest without overlaps."""
    forms = {form for value in secrets for form in secret_forms(value)}
    occurrences = set()
    for form in forms:
        at = data.find(form)
        while at >= 0:
            occurrences.add((at, at + len(form)))
            at = data.find(form, at + 1)
    out, pos = [], 0
    for start, end in sorted(occurrences, key=lambda match: (match[0], -match[1])):
        if start >= pos:
            out += [data[pos:start], SECRET_MASK]
            pos = end
    return b"".join([*out, data[pos:]])


@pytest.fixture(params=["sample every form of 8+ bytes", "find every form"])
def search(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each way of finding a form, whatever the cost model (used by the other tests) would choose."""
    find_cost = 0.0 if request.param == "find every form" else 1e9
    monkeypatch.setattr(masking, "_FIND_COST", find_cost)
    masking._tables.cache_clear()  # tables are cached per set of forms, whatever the costs were
    yield
    masking._tables.cache_clear()


def run(secrets: Iterable[str], chunks: Iterable[bytes]) -> bytes:
    masker = SecretMasker(secrets)
    return b"".join([masker.feed(chunk) for chunk in chunks] + [masker.flush()])


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    "form",
    [
        b'pa ss"w/\xc3\xb6+rd',  # raw UTF-8
        b'pa ss\\"w/\\u00f6+rd',  # json.dumps
        b'pa ss\\"w/\xc3\xb6+rd',  # json.dumps(ensure_ascii=False)
        b"pa%20ss%22w%2F%C3%B6%2Brd",  # quote(safe="")
        b"pa+ss%22w%2F%C3%B6%2Brd",  # quote_plus
    ],
)
def test_each_text_form_is_masked(form: bytes) -> None:
    assert run(['pa ss"w/ö+rd'], [b"<" + form + b">\n"]) == b"<***>\n"


def test_base64_cores_skip_the_characters_that_depend_on_neighbours() -> None:
    # base64(b"abcdefgh") == b"YWJjZGVmZ2g=": the last "g" also holds 4 bits of whatever follows.
    assert base64_cores(b"abcdefgh")[0] == b"YWJjZGVmZ2"
    for align, core in enumerate(base64_cores(b"abcdefgh")):
        for before in (bytes(align), b"\xff" * align, b"xyz"[:align]):
            for after in (b"", b"\x00", b"\xff\xfe"):
                assert core in base64.b64encode(b"0123" * 3 + before + b"abcdefgh" + after)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=7, max_size=40), st.binary(max_size=12), st.binary(max_size=12))
def test_base64_encoded_secret_is_masked_in_every_alignment(secret: str, before: bytes, after: bytes) -> None:
    encoded = base64.b64encode(before + secret.encode() + after)
    out = run([secret], [b"data: " + encoded + b"\n"])
    assert SECRET_MASK in out
    assert base64_cores(secret.encode())[len(before) % 3] not in out


def test_short_values_are_not_masked_and_counted_without_their_value() -> None:
    masker = SecretMasker(["abc", "x", "", "abc", TOKEN])
    assert masker.too_short == 2  # "abc" and "x"; the empty value is no secret
    assert masker.feed(b"abc x " + TOKEN.encode() + b"\n") == b"abc x ***\n"
    assert not is_maskable("abc") and is_maskable("abcd")
    assert secret_forms("abc") == set()


def test_base64_cores_need_a_floor_of_characters() -> None:
    # 5 bytes give cores of at most 6 characters: not masked, they would garble ordinary base64.
    assert secret_forms("abcde") == {b"abcde"}
    assert base64.b64encode(b"abcdefg") == b"YWJjZGVmZw=="
    assert b"YWJjZGVmZ" in secret_forms("abcdefg")


def test_no_secrets_returns_the_input_itself() -> None:
    data = b"line \xff\xfe 1\n" * 1000
    assert SecretMasker([]).feed(data) is data
    assert SecretMasker(["ab"]).feed(data) is data
    masker = SecretMasker([TOKEN, PEM])
    assert masker.feed(data) is data
    assert masker.held == 0
    assert masker.flush() == b""


def test_bytes_that_are_not_utf8_pass_through_exactly() -> None:
    data = b"\xff\xc3(\xe2\x82" + TOKEN.encode() + b"\xc3\n\x00\x80" + TOKEN.encode()[:5]
    assert run([TOKEN], [data]) == b"\xff\xc3(\xe2\x82***\xc3\n\x00\x80" + TOKEN.encode()[:5]
    # A value that os.environ decoded with surrogateescape stands for the bytes the job prints.
    assert run(["pass\udcffword"], [b"[pass\xffword]"]) == b"[***]"


def test_longest_form_wins_at_the_same_start() -> None:
    assert run(["abcd", "abcdef"], [b"xabcdefx"]) == b"x***x"
    assert run(["abcd", "abcdef"], [b"xabcdex"]) == b"x***ex"
    # Even when the longer one is only decided by a later feed.
    assert run(["abcd", "abcdef"], [b"xabcd", b"ef"]) == b"x***"
    assert run(["abcd", "abcdef"], [b"xabcd", b"eg"]) == b"x***eg"


def test_leftmost_match_wins_over_a_later_overlapping_one() -> None:
    assert run(["abcdef", "defghi"], [b"abcdefghi"]) == b"***ghi"
    assert run(["abcdef", "cdefghij"], [b"abcdefghij"]) == b"***ghij"
    # Overlapping occurrences of one secret: the one left after the first match is still found.
    assert run(["abab", "xxab"], [b"xxababab"]) == b"******"


def test_flush_masks_shorter_forms_inside_a_held_prefix() -> None:
    masker = SecretMasker(["abcd", "abcdef"])
    assert masker.feed(b"> abcde") == b"> "
    assert masker.held == 5
    assert masker.flush() == b"***e"


def test_secret_split_at_every_cut_point() -> None:
    data = f"a {TOKEN} b\n{PEM} c {TOKEN[:6]}".encode()
    expected = b"a *** b\n*** c " + TOKEN.encode()[:6]
    for cut in range(len(data) + 1):
        assert run([TOKEN, PEM], [data[:cut], data[cut:]]) == expected
        for second in range(cut, len(data) + 1, 17):
            assert run([TOKEN, PEM], split(data, [cut, second])) == expected


def test_one_byte_feeds() -> None:
    data = f"a {TOKEN} {TOKEN[:-1]}\n{PEM}{TOKEN}".encode() + base64.b64encode(b"x" + PEM.encode())
    expected = reference([TOKEN, PEM], data)
    assert expected.count(SECRET_MASK) == 4
    assert run([TOKEN, PEM], [data[i : i + 1] for i in range(len(data))]) == expected


def test_held_is_only_a_possible_start_of_a_secret() -> None:
    masker = SecretMasker([TOKEN])
    assert masker.feed(b"line 1\n") == b"line 1\n"
    assert masker.feed(b"x hunt") == b"x "
    assert masker.held == 4
    assert masker.feed(b"ing\n") == b"hunting\n"
    assert masker.held == 0


@pytest.mark.usefixtures("search")
@pytest.mark.parametrize("before", [0, 2000])
@pytest.mark.parametrize("secret", ["01234567", "0123456789abcdef"])
def test_a_shortest_form_is_found_at_every_offset(before: int, secret: str) -> None:
    # Sampled, the shortest form sets the stride: wherever it starts, in small and big buffers, one word is hit.
    for pad in range(before, before + 80):
        assert run([secret], [b"." * pad + secret.encode() + b".\n"]) == b"." * pad + b"***.\n"


@pytest.mark.usefixtures("search")
def test_large_chunks_match_the_reference() -> None:
    # Big buffers take the eight-view sampling path; secrets land at every offset modulo the stride.
    rnd = random.Random(7)
    secrets = [PEM, TOKEN, "x" * 20 + "tail", *("".join(rnd.choices("abcXYZ0189", k=n)) for n in (8, 9, 17, 40))]
    forms = sorted({form for value in secrets for form in secret_forms(value)})
    pieces = []
    for i in range(3000):
        pieces.append(b"2024-05-01 INFO step=%d loss=0.%d x" % (i, rnd.getrandbits(20)) + b"x" * (i % 29))
        form = rnd.choice(forms)
        pieces.append(form if rnd.random() < 0.7 else form[: rnd.randrange(1, len(form))])
    data = b"\n".join(pieces)
    expected = reference(secrets, data)
    assert expected.count(SECRET_MASK) > 1500
    for size in (1 << 18, 65536, 3000):
        assert run(secrets, split(data, range(size, len(data), size))) == expected


alphabet = st.sampled_from(list(b"abcd-+/= \n\xff\xc3"))
secret_values = st.lists(
    st.one_of(
        st.text(alphabet="abcd", min_size=1, max_size=8),
        st.text(alphabet="abcd-+/= \n", min_size=4, max_size=24),
        st.text(alphabet="abcd", min_size=8, max_size=18),
        st.just(PEM),
    ),
    max_size=4,
)


@st.composite
def logs(draw: st.DrawFn, secrets: list[str]) -> bytes:
    """Bytes from a small alphabet mixed with whole and partial forms of the secrets."""
    forms = sorted({form for value in secrets for form in secret_forms(value)})
    pieces: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()) and forms:
            form = draw(st.sampled_from(forms))
            pieces.append(form[: draw(st.integers(1, len(form)))])
        else:
            pieces.append(bytes(draw(st.lists(alphabet, max_size=20))))
    return b"".join(pieces)


@pytest.mark.usefixtures("search")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_chunking_matches_the_reference(data: st.DataObject) -> None:
    secrets = data.draw(secret_values)
    log = data.draw(logs(secrets))
    cuts = data.draw(st.lists(st.integers(0, len(log)), max_size=8))
    assert run(secrets, split(log, cuts)) == reference(secrets, log)


@pytest.mark.usefixtures("search")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_resuming_from_consumed_minus_held_gives_the_same_output(data: st.DataObject) -> None:
    secrets = data.draw(secret_values)
    log = data.draw(logs(secrets))
    chunks = split(log, data.draw(st.lists(st.integers(0, len(log)), max_size=8)))
    stop = data.draw(st.integers(0, len(chunks)))
    # Run 1 stops after `stop` chunks, without flush, as a crashed or restarted worker would.
    first = SecretMasker(secrets)
    written = b"".join(first.feed(chunk) for chunk in chunks[:stop])
    checkpoint = sum(map(len, chunks[:stop])) - first.held
    # Run 2: a new masker fed the same input again from the recorded offset, cut differently.
    rest = log[checkpoint:]
    resumed = run(secrets, split(rest, data.draw(st.lists(st.integers(0, len(rest)), max_size=8))))
    assert written + resumed == run(secrets, chunks) == reference(secrets, log)
