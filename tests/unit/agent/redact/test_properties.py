"""Property tests: redaction never raises, removes planted secrets, and is idempotent.

Derandomised so a run is reproducible: the same examples every time.
"""

from __future__ import annotations

import collections
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostdiag.agent.redact import load_redactor

REDACTOR = load_redactor()
SETTINGS = settings(derandomize=True, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow])

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
# Characters people put in passwords, minus those that end an unquoted value.
PW_CHARS = ALNUM + "!@#$%^*-_+=.?~"

# Any text, including lone surrogates, the one character whose lower case is
# longer, line breaks, markers and fragments of the rules' own syntax.
odd = st.sampled_from(["\udcff", "\u0130", "\n", "\r\n", "\t", "[REDACTED:jwt]", "password=", "://", "@", '"',
                       "\\", "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----", "eyJ", "Bearer ",
                       "Authorization: ", "key", "token", "AKIA"])
any_text = st.lists(st.one_of(st.text(max_size=40), odd), max_size=30).map("".join)
line_text = any_text.map(lambda t: t.replace("\n", " ").replace("\r", " "))


def word(chars: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=chars, min_size=min_size, max_size=max_size)


# (secret, the line it is planted in)
planted = st.one_of(
    word(PW_CHARS, 4, 30).map(lambda v: ("s3C" + v, f"password={'s3C' + v}")),
    word(ALNUM, 8, 40).map(lambda v: ("s3C" + v, f'{{"api_key": "s3C{v}", "n": 1}}')),
    word(ALNUM, 8, 40).map(lambda v: ("s3C" + v, f"client_secret: s3C{v}")),
    word(ALNUM + "-_.~", 4, 30).map(lambda v: ("s3C" + v, f"postgres://app:s3C{v}@db-1:5432/orders")),
    word(ALNUM + "._-", 8, 60).map(lambda v: ("s3C" + v, f"Authorization: Bearer s3C{v}")),
    word(ALNUM, 36, 36).map(lambda v: ("ghp_" + v, f"token ghp_{v} used")),
    word(string.ascii_uppercase + string.digits, 16, 16).map(lambda v: ("AKIA" + v, f"key AKIA{v} in use")),
    st.tuples(word(B64URL, 8, 40), word(B64URL, 2, 40), word(B64URL, 0, 60)).map(
        lambda p: (f"eyJ{p[0]}.{p[1]}.{p[2]}", f"jwt=eyJ{p[0]}.{p[1]}.{p[2]}")),
    word(ALNUM, 20, 40).map(lambda v: ("glpat-" + v, f"glpat-{v}")),
    word(ALNUM, 24, 40).map(lambda v: ("sk_live_" + v, f"stripe sk_live_{v}")),
    st.lists(word(B64, 16, 64), min_size=1, max_size=5).map(
        lambda body: (body[0], "\n".join(["-----BEGIN EC PRIVATE KEY-----", *body, "-----END EC PRIVATE KEY-----"]))),
)


@SETTINGS
@given(any_text)
def test_never_raises_keeps_line_breaks_and_is_idempotent(text: str) -> None:
    counts: collections.Counter[str] = collections.Counter()
    once = REDACTOR.redact(text, counts)
    assert once.count("\n") == text.count("\n")
    again: collections.Counter[str] = collections.Counter()
    assert REDACTOR.redact(once, again) == once
    assert not again


@SETTINGS
@given(any_text, planted, any_text)
def test_planted_secret_is_removed(before: str, secret_line: tuple[str, str], after: str) -> None:
    secret, line = secret_line
    text = f"{before}\n{line}\n{after}"
    out = REDACTOR.redact(text)
    planted_lines = out.split("\n")[before.count("\n") + 1: before.count("\n") + 2 + line.count("\n")]
    assert secret not in "\n".join(planted_lines), out
    assert REDACTOR.redact(out) == out


@SETTINGS
@given(line_text, planted, line_text)
def test_planted_secret_is_removed_inside_a_line(before: str, secret_line: tuple[str, str], after: str) -> None:
    secret, line = secret_line
    out = REDACTOR.redact(f"{before} {line} {after}")
    assert secret not in out.replace(before, "", 1)[: len(out) - len(after)] or secret in before + after


@SETTINGS
@given(st.lists(st.one_of(any_text, planted.map(lambda p: p[1])), max_size=12), st.data())
def test_stream_over_line_chunks_equals_whole_text(parts: list[str], data: st.DataObject) -> None:
    text = "\n".join(parts) + "\n"
    lines = text.split("\n")[:-1]
    lines = [line + "\n" for line in lines]  # lines end at "\n" only (not at \r, \x0c, \x85 ...)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(lines)), max_size=4))))
    chunks, last = [], 0
    for cut in [*cuts, len(lines)]:
        chunks.append("".join(lines[last:cut]))
        last = cut
    whole_counts: collections.Counter[str] = collections.Counter()
    whole = REDACTOR.redact(text, whole_counts)
    stream = REDACTOR.stream()
    stream_counts: collections.Counter[str] = collections.Counter()
    streamed = "".join(stream.redact(chunk, stream_counts) for chunk in chunks)
    assert streamed == whole
    assert stream_counts == whole_counts


@SETTINGS
@given(st.lists(any_text, max_size=8))
def test_argv_never_raises(argv: list[str]) -> None:
    out = REDACTOR.redact_argv(argv)
    assert len(out) == len(argv)
    assert REDACTOR.redact_argv(out) == out


@SETTINGS
@given(st.dictionaries(st.one_of(st.text(max_size=20), st.sampled_from(["DB_PASSWORD", "PWD", "API_KEY"])),
                       any_text, max_size=8))
def test_env_never_raises(env: dict[str, str]) -> None:
    out = REDACTOR.redact_env(env)
    assert list(out) == list(env)
    assert REDACTOR.redact_env(out) == out
