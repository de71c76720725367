"""Behaviour of the redaction engine: API contract, counts, idempotency, streams, prefilter."""

from __future__ import annotations

import collections

import pytest

from hostdiag.agent.redact import Redactor, StreamRedactor, load_redactor
from hostdiag.agent.redact import engine

PEM_LINES = [
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "QyNTUxOQAAACBsZWFrZWQtaWYteW91LWNhbi1yZWFkLXRoaXMtbGluZS0xAAAAJAAAAAdz",
    "c2gtZWQyNTUxOQAAACBzZWNvbmQtYm9keS1saW5lLW11c3QtYmUtcmVkYWN0ZWQtdG9v==",
    "-----END OPENSSH PRIVATE KEY-----",
]
BODY = PEM_LINES[1:-1]


def test_api_shape(redactor: Redactor) -> None:
    assert isinstance(redactor.rule_names, tuple)
    assert len(set(redactor.rule_names)) == len(redactor.rule_names)
    for name in ("password-assign", "url-credentials", "auth-bearer", "pem-private-key", "jwt",
                 "aws-access-key-id", "aws-secret-access-key", "github-token", "secret-name"):
        assert name in redactor.rule_names
    assert isinstance(redactor.stream(), StreamRedactor)


def test_brief_examples(redactor: Redactor) -> None:
    assert redactor.redact("password=hunter2") == "password=[REDACTED:password-assign]"
    assert redactor.redact("Authorization: Bearer abc.def") == "Authorization: Bearer [REDACTED:auth-bearer]"
    assert (redactor.redact("postgres://app:s3cr3t@db:5432/x")
            == "postgres://app:[REDACTED:url-credentials]@db:5432/x")


def test_counts_one_per_hit_under_the_rule_name(redactor: Redactor) -> None:
    text = "\n".join([
        "password=a1 password=b2",
        "Authorization: Bearer abc.def",
        "postgres://app:x1@db/x and mysql://root:y2@db/y",
        "nothing here",
    ])
    counts: collections.Counter[str] = collections.Counter()
    redactor.redact(text, counts)
    assert counts == {"password-assign": 2, "auth-bearer": 1, "url-credentials": 2}
    # counts accumulate across calls, and None is accepted
    redactor.redact("password=c3", counts)
    assert counts["password-assign"] == 3
    assert redactor.redact("password=c3", None) == "password=[REDACTED:password-assign]"


def test_overlapping_claims_become_one_marker_for_the_wider_rule(redactor: Redactor) -> None:
    counts: collections.Counter[str] = collections.Counter()
    out = redactor.redact('{"token": "ghp_0123456789abcdefghijABCDEFGHIJ012345"}', counts)
    assert out == '{"token": "[REDACTED:github-token]"}'  # same span: the rule listed first wins
    assert counts == {"github-token": 1}
    counts.clear()
    out = redactor.redact("client_secret=xx-ghp_0123456789abcdefghijABCDEFGHIJ012345-yy", counts)
    assert out == "client_secret=[REDACTED:secret-assign]"  # the wider claim wins
    assert counts == {"secret-assign": 1}


def test_idempotent_on_a_mixed_block(redactor: Redactor) -> None:
    block = "\n".join([
        "password=hunter2 token=abcdef123456 api_key=zzzzyyyyxxxx",
        '{"password":"p","client_secret":"q","Authorization":"Bearer r.s.t"}',
        "postgres://u:v@h/d redis://:w@h2:6379",
        *PEM_LINES,
        "AKIAIOSFODNN7EXAMPLE ghp_0123456789abcdefghijABCDEFGHIJ012345",
    ])
    once = redactor.redact(block)
    counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact(once, counts) == once
    assert not counts


def test_line_breaks_are_never_added_or_removed(redactor: Redactor) -> None:
    block = "a\npassword=x\r\n\n" + "\n".join(PEM_LINES) + "\n\ntrailing"
    out = redactor.redact(block)
    assert [i for i, c in enumerate(out) if c == "\n"] != [] and out.count("\n") == block.count("\n")
    assert out.splitlines()[0] == "a"
    assert out.endswith("\n\ntrailing")
    assert out.split("\n")[2] == ""  # the \r\n line keeps its \r
    assert out.split("\n")[1] == "password=[REDACTED:password-assign]\r"


def test_pem_block_keeps_begin_end_and_indentation(redactor: Redactor) -> None:
    yaml = "tls:\n  key: |\n" + "\n".join("    " + line for line in PEM_LINES) + "\n  cert: x"
    counts: collections.Counter[str] = collections.Counter()
    out = redactor.redact(yaml, counts)
    lines = out.split("\n")
    assert lines[2] == "    -----BEGIN OPENSSH PRIVATE KEY-----"
    assert lines[3:6] == ["    [REDACTED:pem-private-key]"] * 3
    assert lines[6] == "    -----END OPENSSH PRIVATE KEY-----"
    assert lines[7] == "  cert: x"
    assert counts == {"pem-private-key": 1}


def test_pem_block_without_end_is_redacted_to_the_end_of_the_text(redactor: Redactor) -> None:
    out = redactor.redact("\n".join(PEM_LINES[:3]) + "\n")
    assert all(b not in out for b in BODY[:2])
    assert out.count("[REDACTED:pem-private-key]") == 2


def test_pem_block_line_limit(redactor: Redactor) -> None:
    """A BEGIN line whose END never comes blanks at most max_lines (200) lines."""
    text = PEM_LINES[0] + "\n" + "\n".join(f"line {i}" for i in range(300))
    out = redactor.redact(text).split("\n")
    assert out[200] == "[REDACTED:pem-private-key]"
    assert out[201] == "line 200"
    assert out[-1] == "line 299"


def test_public_key_and_certificate_blocks_are_kept(redactor: Redactor) -> None:
    text = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n" \
           "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUe\n-----END CERTIFICATE-----"
    assert redactor.redact(text) == text


def test_stream_continues_an_open_pem_block(redactor: Redactor) -> None:
    stream = redactor.stream()
    counts: collections.Counter[str] = collections.Counter()
    first = stream.redact("log line 1\n" + PEM_LINES[0] + "\n" + BODY[0] + "\n", counts)
    assert BODY[0] not in first
    assert stream.in_block
    second = stream.redact(BODY[1] + "\n" + BODY[2] + "\n", counts)
    assert second == "[REDACTED:pem-private-key]\n[REDACTED:pem-private-key]\n"
    assert stream.in_block
    third = stream.redact(PEM_LINES[-1] + "\npassword=x\nafter\n", counts)
    assert third == PEM_LINES[-1] + "\npassword=[REDACTED:password-assign]\nafter\n"
    assert not stream.in_block
    fourth = stream.redact(BODY[0] + "\n", counts)
    assert fourth == BODY[0] + "\n"  # outside a block, base64 alone is not a secret
    assert counts == {"pem-private-key": 1, "password-assign": 1}


def test_stream_begin_line_at_the_end_of_a_block(redactor: Redactor) -> None:
    stream = redactor.stream()
    counts: collections.Counter[str] = collections.Counter()
    assert stream.redact("x\n" + PEM_LINES[0] + "\n", counts) == "x\n" + PEM_LINES[0] + "\n"
    assert stream.in_block
    out = stream.redact("\n".join(PEM_LINES[1:]) + "\n", counts)
    assert all(b not in out for b in BODY)
    assert counts == {"pem-private-key": 1}


def test_stream_reset_and_plain_redact_keep_no_state(redactor: Redactor) -> None:
    stream = redactor.stream()
    stream.redact(PEM_LINES[0] + "\n")
    assert stream.in_block
    stream.reset()
    assert not stream.in_block
    assert stream.redact(BODY[0]) == BODY[0]
    redactor.redact(PEM_LINES[0] + "\n")
    assert redactor.redact(BODY[0]) == BODY[0]


def test_stream_block_limit_spans_calls(redactor: Redactor) -> None:
    stream = redactor.stream()
    stream.redact(PEM_LINES[0] + "\n" + "\n".join("x" * 10 for _ in range(150)) + "\n")
    assert stream.in_block
    out = stream.redact("\n".join("y" * 10 for _ in range(100)) + "\n").split("\n")
    assert out[49] == "[REDACTED:pem-private-key]"
    assert out[50] == "y" * 10
    assert not stream.in_block


def test_argv(redactor: Redactor) -> None:
    counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact_argv(["mysql", "-uroot", "-pS3cret", "db"], counts) == [
        "mysql", "-uroot", "-p[REDACTED:cli-password]", "db"]
    assert redactor.redact_argv(["app", "--password", "pw", "--user=bob"], counts) == [
        "app", "--password", "[REDACTED:secret-name]", "--user=bob"]
    assert redactor.redact_argv(["app", "--token=abc", "--api-key", "k1"], counts) == [
        "app", "--token=[REDACTED:secret-name]", "--api-key", "[REDACTED:secret-name]"]
    assert redactor.redact_argv(["env", "PGPASSWORD=x", "psql"], counts) == [
        "env", "PGPASSWORD=[REDACTED:secret-name]", "psql"]
    assert redactor.redact_argv(["sh", "-c", "PGPASSWORD=x psql -h db"], counts) == [
        "sh", "-c", "PGPASSWORD=[REDACTED:password-assign] psql -h db"]
    assert redactor.redact_argv(["curl", "-u", "bob:pw", "https://x"], counts) == [
        "curl", "-u", "bob:[REDACTED:cli-password]", "https://x"]
    assert redactor.redact_argv(["psql", "postgres://a:b@h/d"], counts) == [
        "psql", "postgres://a:[REDACTED:url-credentials]@h/d"]
    assert counts == {"cli-password": 2, "secret-name": 4, "password-assign": 1, "url-credentials": 1}


def test_argv_leaves_lookalikes(redactor: Redactor) -> None:
    for argv in (["docker", "run", "-p", "8080:80", "nginx"],
                 ["docker", "login", "--password-stdin", "registry"],
                 ["app", "--no-password", "file.txt"],
                 ["kubectl", "get", "secret", "db-credentials"],
                 ["mysql", "-h", "db", "-p", "orders"],
                 ["app", "--password"],
                 ["app", "--password", "--verbose"],
                 ["ssh-add", "/home/bob/.ssh/id_ed25519"],
                 []):
        counts: collections.Counter[str] = collections.Counter()
        assert redactor.redact_argv(argv, counts) == argv
        assert not counts


def test_argv_accepts_any_iterable(redactor: Redactor) -> None:
    assert redactor.redact_argv(iter(("a", "--token", "t0k"))) == ["a", "--token", "[REDACTED:secret-name]"]


def test_env(redactor: Redactor) -> None:
    env = {
        "PGPASSWORD": "x", "DB_PASSWD": "y", "API_KEY": "k", "GITHUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s",
        "OAUTH_CLIENT_SECRET": "c", "PRIVATE_KEY": "p", "GOOGLE_CREDENTIALS": '{"type": "service_account"}', "AUTH": "u:p",
        "AWS_ACCESS_KEY": "a", "SESSION_KEY": "k2", "SENTRY_DSN": "https://k@s.io/1", "DATABASE_URL": "sqlite://",
        "APIKEY": "k3", "CREDENTIAL": "c2",
    }
    counts: collections.Counter[str] = collections.Counter()
    out = redactor.redact_env(env, counts)
    assert out == {k: "[REDACTED:secret-name]" for k in env}
    assert counts == {"secret-name": len(env)}


def test_env_other_values_go_through_text_rules(redactor: Redactor) -> None:
    env = {"PWD": "/home/bob", "OLDPWD": "/", "SSH_AUTH_SOCK": "/tmp/agent.1", "XAUTHORITY": "/run/user/1000/x",
           "GIT_ASKPASS": "/usr/lib/git-core/askpass", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin",
           "HTTP_PROXY": "http://u:pw@proxy:3128", "JAVA_OPTS": "-Dapp.password=pw -Xmx1g", "EMPTY_TOKEN": "",
           "DB_PASSWORD_FILE": "/run/secrets/db"}
    counts: collections.Counter[str] = collections.Counter()
    out = redactor.redact_env(env, counts)
    assert out == {**env, "HTTP_PROXY": "http://u:[REDACTED:url-credentials]@proxy:3128",
                   "JAVA_OPTS": "-Dapp.password=[REDACTED:password-assign] -Xmx1g"}
    assert counts == {"url-credentials": 1, "password-assign": 1}


def test_env_is_idempotent(redactor: Redactor) -> None:
    env = {"PGPASSWORD": "x", "HTTP_PROXY": "http://u:pw@proxy:3128"}
    once = redactor.redact_env(env)
    counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact_env(once, counts) == once
    assert not counts


def test_non_ascii_text(redactor: Redactor) -> None:
    text = "Grüße 🙂 İstanbul password=pässwörd ok\nçà token=日本語トークン\n\udcff password=sur"
    out = redactor.redact(text)
    assert out == ("Grüße 🙂 İstanbul password=[REDACTED:password-assign] ok\nçà token=[REDACTED:secret-assign]\n"
                   "\udcff password=[REDACTED:password-assign]")


def test_only_one_character_changes_length_when_lower_cased() -> None:
    """The engine relies on str.lower() keeping offsets, except for U+0130 which it maps first."""
    import sys
    assert [c for c in range(sys.maxunicode + 1) if len(chr(c).lower()) != 1] == [0x130]


def test_lowercase_pattern_keeps_escapes_and_group_syntax() -> None:
    assert engine._lowercase_pattern(r"(?P<Name>AB\S\W[A-Z])(?P=Name)") == r"(?P<name>ab\S\W[a-z])(?P=name)"


@pytest.mark.parametrize("text", [
    "", "\n", "\n\n\n", "x", "password", "password=", "password=\n", "[REDACTED:password-assign]",
    "-----BEGIN RSA PRIVATE KEY-----", "a" * 100_000, "@" * 10_000, "key " * 20_000,
    "password=" * 5_000, "eyJ" * 10_000, "://" + ":" * 5_000 + "@",
])
def test_edge_inputs(redactor: Redactor, text: str) -> None:
    out = redactor.redact(text)
    assert out.count("\n") == text.count("\n")
    assert redactor.redact(out) == out


def test_non_string_input_is_converted(redactor: Redactor) -> None:
    assert redactor.redact(12345) == "12345"  # type: ignore[arg-type]
    assert redactor.redact_argv([1, "--token", 2]) == ["1", "--token", "[REDACTED:secret-name]"]  # type: ignore[list-item]


def test_fallback_prefilter_gives_identical_results(redactor: Redactor, fixtures_dir) -> None:
    fallback = Redactor(redactor._rules, redactor._placeholders, use_automaton=False)
    assert fallback.prefilter_backend == "str.find"
    rows = (fixtures_dir / "redaction" / "secrets.txt").read_text(encoding="utf-8").splitlines()
    block = "\n".join(r.split("\t")[0] for r in rows)
    block += "\n" + (fixtures_dir / "redaction" / "clean.txt").read_text(encoding="utf-8")
    a: collections.Counter[str] = collections.Counter()
    b: collections.Counter[str] = collections.Counter()
    assert fallback.redact(block, a) == redactor.redact(block, b)
    assert a == b


def test_overlapping_keywords_are_all_found() -> None:
    """The automaton reports non-overlapping matches; a keyword inside another's match must still count."""
    lits = engine._minimal_literals(["pass", "sig=", "ssw"])
    assert set(lits) == {"pass", "sig=", "ssw"}
    assert engine._can_overlap("pass", "ssw")
    assert not engine._can_overlap("ssw", "pass")


def test_minimal_literals() -> None:
    assert sorted(engine._minimal_literals(["password", "pass", "passwd", "key", "private key", "@"])) == [
        "@", "key", "pass"]


def test_empty_redactor_changes_nothing() -> None:
    empty = Redactor()
    assert empty.rule_names == ()
    assert empty.redact("password=x") == "password=x"
    assert empty.redact_argv(["a", "--password", "x"]) == ["a", "--password", "x"]
    assert empty.redact_env({"PASSWORD": "x"}) == {"PASSWORD": "x"}


def test_load_is_repeatable() -> None:
    assert load_redactor().rule_names == load_redactor().rule_names
